package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Config is the bridge's TOML configuration (docs/bridge.md, "Configuration").
type Config struct {
	NatsURL       string   `toml:"nats_url"`
	Stream        string   `toml:"stream"`
	Replicas      int      `toml:"replicas"`
	DedupWindow   duration `toml:"dedup_window"`
	BusID         string   `toml:"bus_id"`
	Socket        string   `toml:"socket"`
	ShmbusCLI     string   `toml:"shmbus_cli"`
	StateDir      string   `toml:"state_dir"`
	MetricsListen string   `toml:"metrics_listen"`
	SchemaBucket  string   `toml:"schema_bucket"`
	MaxPending    int      `toml:"max_pending"`
	Rescan        duration `toml:"rescan_interval"`
	Forward       Forward  `toml:"forward"`
	Import        []Import `toml:"import"`
}

// Forward: local topics (names or globs) published to subjects of the same names.
type Forward struct {
	Topics  []string `toml:"topics"`
	Durable string   `toml:"durable"` // the local durable subscriber name
}

// Import: a subject filter whose messages go to local topics of the same names.
type Import struct {
	Subject string `toml:"subject"`
	Durable string `toml:"durable"` // the JetStream durable consumer name
	// Settings of the local topics the bridge creates (when the schema bucket has
	// no entry for the subject).
	Capacity uint64 `toml:"capacity"`
	Flush    string `toml:"flush"` // "interval" (default), "batch", "none"
}

type duration struct{ time.Duration }

func (d *duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func loadConfig(path string) (*Config, error) {
	var c Config
	md, err := toml.DecodeFile(path, &c)
	if err != nil {
		return nil, err
	}
	if u := md.Undecoded(); len(u) > 0 {
		return nil, fmt.Errorf("%s: unknown keys %v", path, u)
	}
	return &c, c.check()
}

func (c *Config) check() error {
	if c.NatsURL == "" {
		c.NatsURL = "nats://127.0.0.1:4222"
	}
	if c.Stream == "" {
		c.Stream = "SHMBUS"
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.DedupWindow.Duration == 0 {
		c.DedupWindow.Duration = 2 * time.Minute
	}
	if c.BusID == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("bus_id not set and no host name: %v", err)
		}
		c.BusID = h
	}
	if strings.ContainsAny(c.BusID, " \t\r\n") {
		return fmt.Errorf("bus_id %q has white space", c.BusID)
	}
	if c.StateDir == "" {
		return fmt.Errorf("state_dir is required (the import checkpoints live there)")
	}
	if c.SchemaBucket == "" {
		c.SchemaBucket = "shmbus-schemas"
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 4096
	}
	if c.Rescan.Duration <= 0 {
		c.Rescan.Duration = 2 * time.Second
	}
	if c.Forward.Durable == "" {
		c.Forward.Durable = "shmbus-nats"
	}
	for _, t := range c.Forward.Topics {
		if err := checkPattern(t); err != nil {
			return fmt.Errorf("forward topic %q: %v", t, err)
		}
		if isGlob(t) && c.ShmbusCLI == "" {
			return fmt.Errorf("forward topic %q is a glob: set shmbus_cli (the shmbus tool lists the topics)", t)
		}
	}
	seen := map[string]bool{}
	for i := range c.Import {
		im := &c.Import[i]
		if err := checkPattern(im.Subject); err != nil {
			return fmt.Errorf("import subject %q: %v", im.Subject, err)
		}
		if im.Durable == "" {
			return fmt.Errorf("import %q: durable (the consumer name) is required", im.Subject)
		}
		if strings.ContainsAny(im.Durable, ".*> \t/\\") {
			return fmt.Errorf("import %q: durable %q may not contain . * > / \\ or spaces", im.Subject, im.Durable)
		}
		if seen[im.Durable] {
			return fmt.Errorf("import durable %q used twice", im.Durable)
		}
		seen[im.Durable] = true
		switch im.Flush {
		case "", "interval", "batch", "none":
		default:
			return fmt.Errorf("import %q: flush %q is not interval, batch or none", im.Subject, im.Flush)
		}
		for _, o := range c.Import[:i] {
			if patternsOverlap(o.Subject, im.Subject) {
				return fmt.Errorf("imports %q and %q overlap: a local topic takes one importer", o.Subject, im.Subject)
			}
		}
		for _, f := range c.Forward.Topics {
			if patternsOverlap(f, im.Subject) {
				return fmt.Errorf("forward %q and import %q overlap: messages would loop", f, im.Subject)
			}
		}
	}
	return nil
}

func isGlob(p string) bool { return strings.ContainsAny(p, "*>") }

// checkPattern: a dotted name whose tokens are non-empty NATS subject tokens; "*"
// matches one token, ">" the rest (last token only).
func checkPattern(p string) error {
	if p == "" {
		return fmt.Errorf("empty")
	}
	toks := strings.Split(p, ".")
	for i, t := range toks {
		if t == "" {
			return fmt.Errorf("empty token")
		}
		if t == ">" && i != len(toks)-1 {
			return fmt.Errorf("'>' only as the last token")
		}
		if t != "*" && t != ">" && strings.ContainsAny(t, "*> \t\r\n") {
			return fmt.Errorf("token %q has a wildcard or white space", t)
		}
	}
	return nil
}

// validName: a concrete topic/subject name (no wildcard), as checkPattern.
func validName(n string) bool { return len(n) <= 255 && checkPattern(n) == nil && !isGlob(n) }

// matches reports whether name matches the pattern (NATS subject rules).
func matches(pattern, name string) bool {
	p := strings.Split(pattern, ".")
	n := strings.Split(name, ".")
	for i, t := range p {
		if t == ">" {
			return len(n) > i
		}
		if i >= len(n) || (t != "*" && t != n[i]) {
			return false
		}
	}
	return len(p) == len(n)
}

// patternsOverlap: some name matches both (token-wise).
func patternsOverlap(a, b string) bool {
	x, y := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		if i == len(x) || i == len(y) {
			return len(x) == len(y)
		}
		if x[i] == ">" || y[i] == ">" {
			return true
		}
		if x[i] != "*" && y[i] != "*" && x[i] != y[i] {
			return false
		}
	}
}

func splitDots(s string) []string { return strings.Split(s, ".") }
