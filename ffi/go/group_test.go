package shmbus_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"shmbus.dev/shmbus"
)

// TestMain runs the member process of the group tests when this test binary is
// started again with SHMBUS_GO_GROUP_SOCK set (see startGoMember), and the tests
// otherwise (so the member is not a test that every normal run would skip).
func TestMain(m *testing.M) {
	if sock := os.Getenv("SHMBUS_GO_GROUP_SOCK"); sock != "" {
		groupMemberMain(sock)
		return
	}
	if os.Getenv("SHMBUS_GO_SPIN_PREFIX") != "" {
		spinConsumerMain()
		return
	}
	if sock := os.Getenv("SHMBUS_GO_FORGER_SOCK"); sock != "" {
		forgerMain(sock)
		return
	}
	code := m.Run()
	// Every test removes what it created: a topic left behind keeps its files in
	// /dev/shm after the process (the tests' prefix names this process).
	left, _ := filepath.Glob("/dev/shm/" + prefix + ".*")
	more, _ := filepath.Glob("/dev/shm/" + prefix + "-*")
	if left = append(left, more...); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests left %d files in /dev/shm: %v\n", len(left), left)
		for _, f := range left {
			os.Remove(f)
		}
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// groupMemberMain joins the group and prints "held p,p,..." whenever what it holds
// changes, and "got <index>" for every message before it releases it, until it is
// killed.
func groupMemberMain(sock string) {
	ctx := context.Background()
	bus, err := shmbus.Connect(ctx, shmbus.ConnectOptions{SocketPath: sock})
	if err != nil {
		fmt.Printf("member: FAIL connect: %v\n", err)
		os.Exit(1)
	}
	m, err := bus.GroupSubscriber(ctx, os.Getenv("SHMBUS_GO_GROUP_TOPIC"), "g", &shmbus.GroupOptions{SyncInterval: 2 * time.Millisecond})
	if err != nil {
		fmt.Printf("member: FAIL open: %v\n", err)
		os.Exit(1)
	}
	shown := "-"
	for {
		ps, err := m.Partitions()
		if err != nil {
			fmt.Printf("member: FAIL partitions: %v\n", err)
			os.Exit(1)
		}
		if now := joinParts(ps); now != shown {
			shown = now
			fmt.Printf("member: held %s\n", now)
		}
		pctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		v, err := m.Poll(pctx)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			continue
		}
		if err != nil || len(v.Data) != 8 {
			fmt.Printf("member: FAIL poll: %v\n", err)
			os.Exit(1)
		}
		fmt.Printf("member: got %d\n", binary.LittleEndian.Uint64(v.Data))
		if err := m.Release(&v); err != nil {
			fmt.Printf("member: FAIL release: %v\n", err)
			os.Exit(1)
		}
	}
}

func joinParts(ps []uint32) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

// member is another process in the group, its lines read into seen (indices)
// and held (its partitions, as printed).
type member struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	held string
	done chan struct{}
}

func (m *member) heldNow() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.held
}

// startMember runs cmd and reads its lines: "held ..." sets held, a "got <index>"
// (Go) or "C <partition> <index>" (the C++ group_helper's log) is sent to got.
func startMember(t *testing.T, cmd *exec.Cmd, got chan<- uint64) *member {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m := &member{cmd: cmd, held: "-", done: make(chan struct{})}
	t.Cleanup(func() {
		m.cmd.Process.Kill()
		<-m.done
	})
	go func() {
		defer close(m.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := strings.TrimPrefix(sc.Text(), "member: ")
			switch {
			case strings.HasPrefix(line, "held "):
				m.mu.Lock()
				m.held = strings.TrimPrefix(line, "held ")
				m.mu.Unlock()
			case strings.HasPrefix(line, "got "):
				if n, err := strconv.ParseUint(strings.TrimPrefix(line, "got "), 10, 64); err == nil {
					got <- n
				}
			case strings.HasPrefix(line, "FAIL"):
				fmt.Fprintln(os.Stderr, "member process:", line)
			}
		}
		m.cmd.Wait()
	}()
	return m
}

// groupFixture: an embedded daemon, a 4-partition topic and a publisher per partition.
type groupFixture struct {
	bus   *shmbus.Bus
	sock  string
	topic string
	pubs  []*shmbus.Publisher
}

func newGroupFixture(t *testing.T, topic string) *groupFixture {
	t.Helper()
	dir := t.TempDir()
	bus, err := shmbus.OpenEmbedded(dir)
	if err != nil {
		t.Fatalf("OpenEmbedded: %v", err)
	}
	t.Cleanup(func() { bus.Close() })
	if err := bus.CreateTopic(topic, shmbus.TopicConfig{Partitions: 4, Capacity: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	f := &groupFixture{bus: bus, sock: filepath.Join(dir, "shmbusd.sock"), topic: topic}
	for p := uint32(0); p < 4; p++ {
		pub, err := bus.Publisher(topic, &shmbus.PublisherOptions{Partition: p})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pub.Close() })
		f.pubs = append(f.pubs, pub)
	}
	return f
}

// publish sends indices [from, to), index i to partition i % 4 (payload: i).
func (f *groupFixture) publish(t *testing.T, ctx context.Context, from, to uint64) {
	t.Helper()
	var b [8]byte
	for i := from; i < to; i++ {
		binary.LittleEndian.PutUint64(b[:], i)
		if err := f.pubs[i%4].Offer(ctx, b[:], i, 0); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
}

// reader is this process's member with what it read: every index, and per
// partition in order.
type reader struct {
	m     *shmbus.GroupSubscriber
	seen  []bool
	last  [4]uint64 // last index + 1 per partition
	order int       // indices read out of order on their partition
}

// pollOnce reads (at most a millisecond), records and releases one message; false
// when none came.
func (r *reader) pollOnce(t *testing.T, ctx context.Context) bool {
	t.Helper()
	pctx, cancel := context.WithTimeout(ctx, time.Millisecond)
	defer cancel()
	v, err := r.m.Poll(pctx)
	if errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if err != nil {
		t.Fatalf("poll: %v", err)
	}
	if len(v.Data) != 8 || v.Partition >= 4 {
		t.Fatalf("poll: %d bytes on partition %d", len(v.Data), v.Partition)
	}
	idx := binary.LittleEndian.Uint64(v.Data)
	if idx >= uint64(len(r.seen)) || idx%4 != uint64(v.Partition) || v.MessageID != idx {
		t.Fatalf("poll: index %d (id %d) on partition %d", idx, v.MessageID, v.Partition)
	}
	if idx+1 <= r.last[v.Partition] {
		r.order++
	}
	r.last[v.Partition] = idx + 1
	r.seen[idx] = true
	if err := r.m.Release(&v); err != nil {
		t.Fatalf("release: %v", err)
	}
	if err := r.m.Release(&v); !errors.Is(err, shmbus.ErrInvalidArgument) {
		t.Fatalf("release twice: want ErrInvalidArgument, got %v", err)
	}
	return true
}

func (r *reader) held(t *testing.T) string {
	t.Helper()
	ps, err := r.m.Partitions()
	if err != nil {
		t.Fatal(err)
	}
	return joinParts(ps)
}

func countSeen(seen []bool, upto int) int {
	n := 0
	for _, s := range seen[:upto] {
		if s {
			n++
		}
	}
	return n
}

// drain moves what the other member reported into seen.
func drain(got <-chan uint64, seen []bool) {
	for {
		select {
		case i := <-got:
			if i < uint64(len(seen)) {
				seen[i] = true
			}
		default:
			return
		}
	}
}

// splitWith polls r until it and the other member hold two partitions each.
func splitWith(t *testing.T, ctx context.Context, r *reader, other *member, got <-chan uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mine, theirs := r.held(t), other.heldNow()
		if len(strings.Split(mine, ",")) == 2 && len(strings.Split(theirs, ",")) == 2 && !overlap(mine, theirs) {
			t.Logf("split: this member holds %s, the other %s", mine, theirs)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no split: this member holds %q, the other %q", mine, theirs)
		}
		r.pollOnce(t, ctx) // drives the syncs
		drain(got, r.seen)
	}
}

func overlap(a, b string) bool {
	for _, x := range strings.Split(a, ",") {
		for _, y := range strings.Split(b, ",") {
			if x == y {
				return true
			}
		}
	}
	return false
}

// Two Go members (this process and a child process) split a 4-partition topic; the
// child is SIGKILLed and this member takes its partitions over; of N sequenced
// messages none is lost (one the child read and had not released may come twice).
func TestGroupMembersSplitAndTakeOverAKilledMember(t *testing.T) {
	ctx := ctxT(t)
	const topic, n = "go.group", 4000
	f := newGroupFixture(t, topic)

	// Without a daemon: refused with the reason.
	direct, err := shmbus.OpenDirect(prefix)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := direct.GroupSubscriber(ctx, topic, "g", nil); !errors.Is(err, shmbus.ErrUnsupported) || !strings.Contains(err.Error(), "shmbusd") {
		t.Fatalf("group on a direct bus: want ErrUnsupported naming shmbusd, got %v", err)
	}
	direct.Close()
	if _, err := f.bus.GroupSubscriber(ctx, "go.none", "g", nil); err == nil {
		t.Fatal("group on a missing topic: no error")
	}

	m, err := f.bus.GroupSubscriber(ctx, topic, "g", &shmbus.GroupOptions{SyncInterval: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r := &reader{m: m, seen: make([]bool, n)}
	if h := r.held(t); h != "0,1,2,3" {
		t.Fatalf("alone: holds %q, want every partition", h)
	}

	got := make(chan uint64, n)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "SHMBUS_GO_GROUP_SOCK="+f.sock, "SHMBUS_GO_GROUP_TOPIC="+topic)
	child := startMember(t, cmd, got)
	splitWith(t, ctx, r, child, got)

	f.publish(t, ctx, 0, n/2)
	deadline := time.Now().Add(20 * time.Second)
	for countSeen(r.seen, n/2) < n/2 && time.Now().Before(deadline) {
		r.pollOnce(t, ctx)
		drain(got, r.seen)
	}
	if c := countSeen(r.seen, n/2); c != n/2 {
		t.Fatalf("first half: %d of %d seen", c, n/2)
	}

	t0 := time.Now()
	if err := child.cmd.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	<-child.done
	f.publish(t, ctx, n/2, n)
	var took time.Duration
	deadline = time.Now().Add(20 * time.Second)
	for countSeen(r.seen, n) < n && time.Now().Before(deadline) {
		r.pollOnce(t, ctx)
		if took == 0 && r.held(t) == "0,1,2,3" {
			took = time.Since(t0)
		}
	}
	drain(got, r.seen)
	if c := countSeen(r.seen, n); c != n {
		t.Fatalf("%d of %d messages seen", c, n)
	}
	if h := r.held(t); h != "0,1,2,3" {
		t.Fatalf("after the kill: holds %q, want every partition", h)
	}
	if r.order != 0 {
		t.Fatalf("%d messages out of order on their partition", r.order)
	}
	st, err := m.Stats()
	if err != nil || st.Assigned != 4 || st.GivenUp != 2 || st.Taken != 6 || st.MemberID == 0 {
		t.Fatalf("stats: %+v %v", st, err)
	}
	t.Logf("partitions of the SIGKILLed member taken over in %v; %d messages, none lost", took, n)
}

// A C++ member (tests/daemon/group_helper, SHMBUS_GROUP_HELPER) and this Go member
// split the partitions of one group and together read every message.
func TestGroupWithACxxMember(t *testing.T) {
	helper := os.Getenv("SHMBUS_GROUP_HELPER")
	if helper == "" {
		t.Skip("SHMBUS_GROUP_HELPER (the build's tests/daemon/group_helper) is not set")
	}
	ctx := ctxT(t)
	const topic, n = "go.group.xlang", 2000
	f := newGroupFixture(t, topic)
	m, err := f.bus.GroupSubscriber(ctx, topic, "g", &shmbus.GroupOptions{SyncInterval: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	r := &reader{m: m, seen: make([]bool, n)}

	// group_helper logs "C <partition> <index>" after each release to its log; a
	// goroutine follows the log.
	log := filepath.Join(t.TempDir(), "cxx.log")
	got := make(chan uint64, n)
	cxx := startMember(t, exec.Command(helper, f.sock, topic, "g", log), make(chan uint64))
	splitWith(t, ctx, r, cxx, got)
	f.publish(t, ctx, 0, n)
	// The C++ member's log is followed from where the last read stopped (complete
	// lines only), and this member drains what it can between reads: re-parsing the
	// whole log every few ms starved this member under -race on a loaded machine.
	deadline := time.Now().Add(20 * time.Second)
	cxxRead := 0
	var logOff int
	for time.Now().Before(deadline) {
		for k := 0; k < 256 && r.pollOnce(t, ctx); k++ {
		}
		if b, err := os.ReadFile(log); err == nil && len(b) > logOff {
			end := logOff + strings.LastIndexByte(string(b[logOff:]), '\n') + 1
			for _, line := range strings.Split(string(b[logOff:end]), "\n") {
				f := strings.Fields(line)
				if len(f) != 3 || f[0] != "C" {
					continue
				}
				if i, err := strconv.ParseUint(f[2], 10, 64); err == nil && i < n {
					r.seen[i] = true
					cxxRead++
				}
			}
			logOff = end
		}
		if countSeen(r.seen, n) == n {
			break
		}
	}
	if c := countSeen(r.seen, n); c != n {
		// What this member holds and saw, to tell a lost assignment from a stuck read.
		st, serr := m.Stats()
		missing := []uint64{}
		for i := 0; i < n && len(missing) < 8; i++ {
			if !r.seen[i] {
				missing = append(missing, uint64(i))
			}
		}
		t.Fatalf("%d of %d messages seen (the C++ member read %d); this member holds %s, read up to %v per partition, stats %+v (%v), the C++ member holds %s; first missing %v",
			c, n, cxxRead, r.held(t), r.last, st, serr, cxx.heldNow(), missing)
	}
	if cxxRead == 0 || cxxRead == n {
		t.Fatalf("the C++ member read %d of %d: not a split", cxxRead, n)
	}
	t.Logf("C++ member read %d, Go member the rest of %d", cxxRead, n)
}

// Poll returns ctx.Err() as soon as its context ends, and ErrClosed when the member
// is closed from another goroutine, whether it holds partitions or not.
func TestGroupPollEndsWithItsContextAndClose(t *testing.T) {
	ctx := ctxT(t)
	f := newGroupFixture(t, "go.group.cancel")
	// Syncs 10 s apart: a wait not ended by the cancellation itself lasts that long.
	slow := &shmbus.GroupOptions{SyncInterval: 10 * time.Second, IdleSync: 10 * time.Second}
	a, err := f.bus.GroupSubscriber(ctx, f.topic, "g", slow)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// A second group on the topic holds every partition too (groups are independent).
	b, err := f.bus.GroupSubscriber(ctx, f.topic, "other", slow)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	for _, m := range []*shmbus.GroupSubscriber{a, b} {
		if ps, err := m.Partitions(); err != nil || joinParts(ps) != "0,1,2,3" {
			t.Fatalf("%s: holds %v (%v), want every partition", m.Group(), ps, err)
		}
	}
	pollEnds := func(what string, m *shmbus.GroupSubscriber, end func(cancel context.CancelFunc), want error) {
		t.Helper()
		pctx, cancel := context.WithCancel(ctx)
		defer cancel()
		type result struct {
			err error
			at  time.Time
		}
		res := make(chan result, 1)
		go func() {
			_, err := m.Poll(pctx)
			res <- result{err, time.Now()}
		}()
		// Let the poll reach its wait (if it has not, the end still ends it at once).
		select {
		case r := <-res:
			t.Fatalf("%s: Poll returned before the end: %v", what, r.err)
		case <-time.After(50 * time.Millisecond):
		}
		t0 := time.Now()
		end(cancel)
		r := <-res
		if !errors.Is(r.err, want) {
			t.Fatalf("%s: want %v, got %v", what, want, r.err)
		}
		if d := r.at.Sub(t0); d > 500*time.Millisecond {
			t.Fatalf("%s: Poll returned %v after the end", what, d)
		} else {
			t.Logf("%s: Poll returned %v after the end", what, d)
		}
	}
	pollEnds("cancel, holding partitions", a, func(c context.CancelFunc) { c() }, context.Canceled)
	pollEnds("close, holding partitions", b, func(context.CancelFunc) { b.Close() }, shmbus.ErrClosed)
	if _, err := b.Poll(ctx); !errors.Is(err, shmbus.ErrClosed) {
		t.Fatalf("poll after close: want ErrClosed, got %v", err)
	}
	// A third member of group g: a's sync gives it two partitions; a fourth one, of a
	// one-member share... here: a member that holds nothing yet waits on nothing.
	c, err := f.bus.GroupSubscriber(ctx, f.topic, "g", slow)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ps, _ := c.Partitions(); len(ps) != 0 {
		t.Fatalf("joined while a holds everything: holds %v, want none yet", ps)
	}
	pollEnds("cancel, holding nothing", c, func(cn context.CancelFunc) { cn() }, context.Canceled)
}
