package spec

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// The name checks replaced these regular expressions; they must accept
// exactly the same strings.
var (
	hostnameRe = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$`)
	nameRe     = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+@-]{0,127}$`)
	macRe      = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
	cmdRe      = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]*$`)
	userRe     = regexp.MustCompile(`^[a-z_][a-z0-9_-]*[$]?$|^[0-9]+$`)
)

func TestNameChecksMatchTheirRegexps(t *testing.T) {
	checks := []struct {
		name string
		fn   func(string) bool
		re   *regexp.Regexp
	}{
		{"hostname", isHostname, hostnameRe},
		{"var name", isVarName, nameRe},
		{"MAC", isMAC, macRe},
		{"command", isCommandName, cmdRe},
		{"user", isUserName, userRe},
	}
	fixed := []string{"", "a", "-", "a-", "-a", "a-b", "app-vm-01", strings.Repeat("a", 63), strings.Repeat("a", 64),
		strings.Repeat("a", 128), strings.Repeat("a", 129), ".x", "_x", "a/b", "a..b", "x@y+z", "02:00:00:00:00:01",
		"02:00:00:00:00:0g", "02-00-00-00-00-01", "root", "www-data", "nobody$", "$", "1000", "10a", "Alice", "a\n"}
	r := rand.New(rand.NewPCG(1, 2))
	alphabet := "aZ09-_.+@:$/ \nfF"
	for range 20000 {
		b := make([]byte, r.IntN(20))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		fixed = append(fixed, string(b))
	}
	for _, c := range checks {
		for _, s := range fixed {
			if got, want := c.fn(s), c.re.MatchString(s); got != want {
				t.Errorf("%s(%q) = %v, the regexp says %v", c.name, s, got, want)
			}
		}
	}
}
