// Package examples embeds the example repositories, so that `credvm demo`
// can run the source document's example machine from any directory.
package examples

import "embed"

// AppVM01 is examples/app-vm-01: a repository with the example machine.
//
//go:embed app-vm-01/credvm.toml app-vm-01/inventory.toml app-vm-01/machines
var AppVM01 embed.FS
