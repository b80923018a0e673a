// Command credvm runs imperative microVMs that own their secrets.
// See README.md, or run `credvm --help`.
package main

import (
	"os"

	"github.com/credvm/credvm/internal/cli"
	"github.com/credvm/credvm/internal/guest"
	_ "github.com/credvm/credvm/internal/hypervisor/drivers"
)

func main() {
	if guest.IsInit() {
		// credvm is the whole userspace of a test guest (see guest.Init).
		os.Exit(guest.Init())
	}
	os.Exit(cli.Main())
}
