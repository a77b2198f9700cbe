package shmbus

//go:generate go run ./internal/gencodes -header ../include/shmbus.h -out codes_gen.go

import (
	"strconv"
	"syscall"
)

// Error is a failure reported by the C ABI: Code is a SHMBUS_E_* code (the
// Code* constants) or -errno for an OS failure; Msg says what happened; Errno is the
// errno of the OS call behind it (shmbus_last_errno()), 0 when none.
//
// Compare with errors.Is against the sentinels (ErrBackPressured, ErrTimedOut,
// ErrNotFound, ...): an *Error matches the sentinel with the same Code whatever its
// Msg. An error with an OS call behind it also unwraps to its syscall.Errno, so
// errors.Is(err, syscall.ENOENT) holds for a connect to a missing socket (Code
// CodeNotConnected) as for an OS failure (Code -ENOENT).
type Error struct {
	Code  int
	Msg   string
	Errno syscall.Errno
}

func (e *Error) Error() string {
	if e.Msg == "" {
		return "shmbus: code " + strconv.Itoa(e.Code)
	}
	return "shmbus: " + e.Msg
}

// Is reports whether target is an *Error with the same Code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// Unwrap returns the syscall.Errno behind the error (Errno, or -Code for an OS
// failure), else nil.
func (e *Error) Unwrap() error {
	if e.Errno != 0 {
		return e.Errno
	}
	if e.Code < 0 && e.Code > -4096 {
		return syscall.Errno(-e.Code)
	}
	return nil
}

// codeError returns the sentinel for rc (no allocation), or a new *Error for
// codes the header does not name (e.g. -errno).
func codeError(rc int) error {
	if rc == 0 {
		return nil
	}
	if s, ok := sentinelByCode[rc]; ok {
		return s
	}
	return &Error{Code: rc, Msg: strerror(rc)}
}
