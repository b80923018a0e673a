package spec

import "strings"

// The checks of names that become paths, hostnames and PATH entries. They
// are written out rather than as regular expressions: they run on every
// name credvm reads, and compiling bounded repetitions such as {0,127} at
// start-up cost every command milliseconds (DESIGN.md §5, bench/README.md).

const (
	lower  = "abcdefghijklmnopqrstuvwxyz"
	upper  = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	digits = "0123456789"
	alnum  = lower + upper + digits
)

// only reports whether s consists of bytes in set.
func only(s, set string) bool {
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(set, s[i]) < 0 {
			return false
		}
	}
	return true
}

// isHostname: a DNS label — 1 to 63 letters, digits and '-', not starting
// or ending with '-'.
func isHostname(s string) bool {
	return len(s) >= 1 && len(s) <= 63 && only(s, alnum+"-") && s[0] != '-' && s[len(s)-1] != '-'
}

// isVarName: generator, file and prompt names become directory names in
// the vars tree, so no separators, no leading dot (staging directories
// are dot-names), nothing a shell would trip on; at most 128 bytes.
func isVarName(s string) bool {
	return len(s) >= 1 && len(s) <= 128 && only(s[:1], alnum+"_") && only(s, alnum+"_.+@-")
}

// isCommandName: a runtime input named as a command or Debian package.
func isCommandName(s string) bool {
	return len(s) >= 1 && only(s[:1], alnum+"_") && only(s, alnum+"_.+-")
}

// isUserName: what useradd accepts (a trailing '$' for machine accounts),
// or a numeric id.
func isUserName(s string) bool {
	if s != "" && only(s, digits) {
		return true
	}
	s = strings.TrimSuffix(s, "$")
	return len(s) >= 1 && only(s[:1], lower+"_") && only(s, lower+digits+"_-")
}

// isMAC: six hex pairs separated by colons.
func isMAC(s string) bool {
	if len(s) != 17 {
		return false
	}
	for i := 0; i < 17; i++ {
		if i%3 == 2 {
			if s[i] != ':' {
				return false
			}
		} else if !only(s[i:i+1], digits+"abcdefABCDEF") {
			return false
		}
	}
	return true
}
