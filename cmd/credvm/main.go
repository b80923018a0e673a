// Command credvm runs imperative microVMs that own their secrets.
// See README.md, or run `credvm --help`.
package main

import (
	"os"

	"github.com/credvm/credvm/internal/cli"
	_ "github.com/credvm/credvm/internal/hypervisor/drivers" // every backend, registered by name
)

func main() { os.Exit(cli.Main()) }
