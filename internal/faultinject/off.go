//go:build !faultinject

package faultinject

// Env is the variable naming the point to die at, in builds with the tag.
const Env = "CREDVM_FAULTPOINT"

// Enabled reports whether this build has fault points.
const Enabled = false

// Point does nothing: this build has no fault points.
func Point(string) {}
