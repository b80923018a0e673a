package guest

import (
	"fmt"
	"io"
)

// ReportPrefix starts every line credvm prints about credentials on a
// guest's console, so the host can pick them out of the boot messages.
const ReportPrefix = "credvm-guest: "

// Report prints each credential (source, size, digest — "secret" for a
// secret unless showSecrets —, name; never the value) and the result of
// verifying them, and reports whether all arrived whole. Only test guests
// show secrets' digests: the console log is kept on the host, and a plain
// SHA-256 of a low-entropy secret is a brute-force away from it.
func Report(w io.Writer, creds []Found, showSecrets bool) bool {
	for _, c := range Classify(creds) {
		fmt.Fprintf(w, "%scred %s %d %s %s\n", ReportPrefix, c.Source, c.Size, c.Shown(showSecrets), c.Name)
	}
	ok, problems, err := Verify(creds)
	switch {
	case err != nil:
		fmt.Fprintf(w, "%sverify failed: %v\n", ReportPrefix, err)
		return false
	case len(problems) > 0:
		for _, p := range problems {
			fmt.Fprintf(w, "%sproblem %s\n", ReportPrefix, p)
		}
		fmt.Fprintf(w, "%sverify failed: %d of %d credentials did not arrive whole\n", ReportPrefix, len(problems), len(ok)+len(problems))
		return false
	}
	fmt.Fprintf(w, "%sverify ok: %d credentials match the manifest\n", ReportPrefix, len(ok))
	return true
}
