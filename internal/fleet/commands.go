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
	"github.com/credvm/credvm/internal/vm"
)

// credvm runs the host's credvm with its repository and state directory.
func (h *Host) credvm(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	return h.Run(ctx, stdin, h.credvmArgv(args)...)
}

// credvmArgv is the host's credvm command line for args: its repository,
// state directory and, under a root prefix, the systemd root its units
// are enabled in (receive) and disabled from (destroy).
func (h *Host) credvmArgv(args []string) []string {
	argv := append([]string{h.Path(HostBinary)}, args...)
	argv = append(argv, "--repo", h.Path(HostRepo), "--state-dir", h.Path(HostState))
	if h.Root != "" {
		argv = append(argv, "--systemd-root", h.Root)
	}
	return argv
}

// Listing is one host's answer to list.
type Listing struct {
	Host string
	// Statuses are its VMs' (each with Host set), as its credvm lists
	// them, only those with one of the tags when tags were asked for.
	Statuses []*vm.Status
	// Err: unreachable, or an answer that is not a list; Warning: the
	// host listed its VMs but some could not be read.
	Err     error
	Warning string
}

// ListOptions narrow List.
type ListOptions struct {
	// Hosts are the hosts to ask (none: every host of the inventory).
	Hosts []string
	// Tags keep the VMs whose machine carries one of them in this
	// repository's inventory (the hosts' repositories have none).
	Tags []string
}

// List asks hosts for their VMs, in parallel, one session each; an
// unreachable host is an Err of its own, never the others' failure, and
// so is a name the inventory does not know.
func List(ctx context.Context, r *repo.Repo, o ListOptions) []Listing {
	names := slices.Sorted(maps.Keys(r.Inventory.Hosts))
	if len(o.Hosts) > 0 {
		names = slices.Clone(o.Hosts)
	}
	tagged := map[string]bool{}
	for _, t := range o.Tags {
		for _, m := range r.Inventory.Tagged(t) {
			tagged[m] = true
		}
	}
	out := make([]Listing, len(names))
	var wg sync.WaitGroup
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = listHost(ctx, r, n)
			if len(o.Tags) > 0 {
				out[i].Statuses = slices.DeleteFunc(out[i].Statuses, func(st *vm.Status) bool { return !tagged[st.Name] })
			}
		}()
	}
	wg.Wait()
	return out
}

func listHost(ctx context.Context, r *repo.Repo, name string) Listing {
	l := Listing{Host: name, Statuses: []*vm.Status{}}
	h, err := HostOf(r, name)
	if err != nil {
		l.Err = err
		return l
	}
	b, err := h.credvm(ctx, nil, "list", "--json")
	if jerr := json.Unmarshal(b, &l.Statuses); jerr != nil {
		l.Statuses = []*vm.Status{}
		if err == nil {
			err = fmt.Errorf("host %s: its list is not JSON: %w", name, jerr)
		}
		l.Err = err
		return l
	}
	if err != nil {
		// Listed, but with errors (a VM whose records cannot be read).
		l.Warning = vm.FirstLine(err)
	}
	for _, st := range l.Statuses {
		st.Host = name
	}
	return l
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
