//go:build !race

package main

const rawBaselineMessages = 1000000
