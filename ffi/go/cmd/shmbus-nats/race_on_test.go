//go:build race

package main

// rawBaselineMessages: under the race detector the baseline's nats.go client is
// instrumented too (its rate means nothing there): fewer messages keep the suite short.
const rawBaselineMessages = 100000
