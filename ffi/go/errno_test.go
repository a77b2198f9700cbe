package shmbus_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"shmbus.dev/shmbus"
)

// The C ABI reports the errno of the OS call that failed: a failure with its own code
// (ErrNotConnected) still unwraps to it, and an OS failure is Code -errno.
func TestErrnoOfTheFailedCallIsReported(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name     string
		open     func() (*shmbus.Bus, error)
		sentinel error
		code     int
		errno    syscall.Errno
	}{
		{"connect to a missing socket", func() (*shmbus.Bus, error) {
			return shmbus.Connect(context.Background(), shmbus.ConnectOptions{SocketPath: filepath.Join(dir, "missing.sock")})
		}, shmbus.ErrNotConnected, shmbus.CodeNotConnected, syscall.ENOENT},
		{"connect to a path longer than sun_path", func() (*shmbus.Bus, error) {
			return shmbus.Connect(context.Background(), shmbus.ConnectOptions{SocketPath: filepath.Join(dir, strings.Repeat("s", 150))})
		}, shmbus.ErrNotConnected, shmbus.CodeNotConnected, syscall.ENAMETOOLONG},
		{"embedded daemon with a 300-byte path component", func() (*shmbus.Bus, error) {
			return shmbus.OpenEmbedded(filepath.Join(dir, strings.Repeat("d", 300)))
		}, nil, -int(syscall.ENAMETOOLONG), syscall.ENAMETOOLONG},
	}
	for _, c := range cases {
		b, err := c.open()
		if err == nil {
			b.Close()
			t.Fatalf("%s: no error", c.name)
		}
		var se *shmbus.Error
		if !errors.As(err, &se) {
			t.Fatalf("%s: %T %v is not a *shmbus.Error", c.name, err, err)
		}
		if se.Code != c.code || se.Errno != c.errno {
			t.Errorf("%s: code %d errno %d (%v), want code %d errno %d (%v)", c.name, se.Code, int(se.Errno), se.Errno,
				c.code, int(c.errno), c.errno)
		}
		if !errors.Is(err, c.errno) {
			t.Errorf("%s: errors.Is(%v, %v) is false", c.name, err, c.errno)
		}
		if c.sentinel != nil && !errors.Is(err, c.sentinel) {
			t.Errorf("%s: errors.Is(%v, %v) is false", c.name, err, c.sentinel)
		}
		if errors.Is(err, syscall.EIO) {
			t.Errorf("%s: %v also matches EIO", c.name, err)
		}
	}
	// No OS call behind a bad argument: nothing to unwrap to.
	_, err := shmbus.OpenDirect("bad/prefix")
	var se *shmbus.Error
	if !errors.As(err, &se) || se.Errno != 0 || errors.Unwrap(err) != nil {
		t.Errorf("bad prefix: %#v should carry no errno", err)
	}
}
