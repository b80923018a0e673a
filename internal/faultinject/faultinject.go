// Package faultinject lets crash-consistency tests kill credvm at a named
// point of a multi-step write, the way a power cut or kill -9 would.
//
// It is one explicit knob, not scattered test branches: the environment
// variable CREDVM_FAULTPOINT names a point, and the process sends itself
// SIGKILL when it reaches that point — no deferred function runs, no file
// is closed, exactly as with kill -9. Unset, Point costs one string compare.
package faultinject

import (
	"os"
	"syscall"
)

// Env is the variable naming the point to die at.
const Env = "CREDVM_FAULTPOINT"

var point = os.Getenv(Env)

// Point kills the process with SIGKILL if name is the configured point.
func Point(name string) {
	if point != "" && point == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered synchronously on every kernel
	}
}
