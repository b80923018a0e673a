//go:build faultinject

// Package faultinject lets crash-consistency tests kill credvm at a named
// point of a multi-step write, the way a power cut or kill -9 would.
//
// It is compiled in only with the build tag faultinject (`make test` and
// `make test-short` set it); in the product, Point is an empty function
// the compiler removes. With the tag, the environment variable
// CREDVM_FAULTPOINT names a point, and the process sends itself SIGKILL
// when it reaches that point — no deferred function runs, no file is
// closed, exactly as with kill -9.
package faultinject

import (
	"os"
	"syscall"
)

// Env is the variable naming the point to die at.
const Env = "CREDVM_FAULTPOINT"

// Enabled reports whether this build has fault points.
const Enabled = true

var point = os.Getenv(Env)

// Point kills the process with SIGKILL if name is the configured point.
func Point(name string) {
	if point != "" && point == name {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL is not delivered synchronously on every kernel
	}
}
