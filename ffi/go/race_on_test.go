//go:build race

package shmbus_test

const raceEnabled = true
