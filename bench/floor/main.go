// Command floor links the libraries credvm is built on and does nothing:
// BenchmarkStartup runs it beside credvm to show what start-up costs
// before any of credvm's own code — the floor credvm cannot go below
// without dropping them.
package main

import (
	_ "archive/tar"
	_ "compress/gzip"
	_ "encoding/json"
	_ "os/user"

	_ "filippo.io/age"
	_ "filippo.io/age/agessh"
	_ "filippo.io/age/armor"
	_ "github.com/coreos/go-systemd/v22/daemon"
	_ "github.com/digitalocean/go-qemu/qmp"
	_ "github.com/pelletier/go-toml/v2"
	_ "github.com/spf13/cobra"
	_ "golang.org/x/sys/unix"
	_ "golang.org/x/term"
)

func main() {}
