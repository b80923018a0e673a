package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"

	"github.com/credvm/credvm/internal/repo"
)

// credvm runs the host's credvm with its repository and state directory.
func (h *Host) credvm(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	return h.Run(ctx, stdin, h.credvmArgv(args)...)
}

// credvmArgv is the host's credvm command line for args.
func (h *Host) credvmArgv(args []string) []string {
	argv := append([]string{h.Path(HostBinary)}, args...)
	return append(argv, "--repo", h.Path(HostRepo), "--state-dir", h.Path(HostState))
}

// Listing is one host's answer to list.
type Listing struct {
	Host     string
	Text     []byte           // its list, as it prints it
	Statuses []map[string]any // with JSON: its statuses
	Err      error            // unreachable: why
}

// List asks every host of the inventory (or only those named) for its
// VMs, in parallel; an unreachable host is an Err of its own, never the
// others' failure, and so is a name the inventory does not know.
func List(ctx context.Context, r *repo.Repo, only []string, asJSON bool) []Listing {
	names := slices.Sorted(maps.Keys(r.Inventory.Hosts))
	if len(only) > 0 {
		names = slices.Clone(only)
	}
	out := make([]Listing, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].Host = n
			h, err := HostOf(r, n)
			if err != nil {
				out[i].Err = err
				return
			}
			args := []string{"list"}
			if asJSON {
				args = append(args, "--json")
			}
			b, err := h.credvm(ctx, nil, args...)
			if err != nil {
				out[i].Err = err
				return
			}
			out[i].Text = b
			if asJSON {
				if err := json.Unmarshal(b, &out[i].Statuses); err != nil {
					out[i].Err = fmt.Errorf("host %s: its list is not JSON: %w", n, err)
				}
			}
		}()
	}
	wg.Wait()
	return out
}

// ConsoleOn attaches this terminal to the console of a VM on the host,
// through the host's `credvm console` on a terminal of its own.
func (h *Host) ConsoleOn(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, name string) error {
	return h.Interactive(ctx, stdin, stdout, stderr, h.credvmArgv([]string{"console", name})...)
}

// LifecycleStream runs a lifecycle command (start, stop, status, logs, …)
// of the host's credvm, its output streamed to out.
func (h *Host) LifecycleStream(ctx context.Context, out io.Writer, args ...string) error {
	return h.Stream(ctx, nil, out, h.credvmArgv(args)...)
}
