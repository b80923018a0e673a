// Command credvm runs imperative microVMs that own their secrets.
// See README.md, or run `credvm --help`.
package main

import (
	"os"

	"github.com/credvm/credvm/internal/cli"
)

func main() {
	os.Exit(cli.Main())
}
