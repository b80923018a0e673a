// Package drivers links every hypervisor backend into the program that
// imports it: each registers itself (hypervisor.Register) from its own
// init. Only the program's wiring — cmd/credvm, and tests that load
// machine files — imports it; the rest of credvm finds backends by name.
package drivers

import (
	_ "github.com/credvm/credvm/internal/hypervisor/cloudhypervisor"
	_ "github.com/credvm/credvm/internal/hypervisor/firecracker"
	_ "github.com/credvm/credvm/internal/hypervisor/qemu"
)
