package vars

import (
	"bytes"
	"strings"
)

// A failing generator's output is not shown by default: a script can print
// a secret encoded in ways no scrubber recognises (base64, hex, one
// character per line). With --show-output it is shown scrubbed of what the
// script could see — its outputs, its dependencies' values in $in, the
// prompt answers —: every line of each value, and every run of 8 or more
// bytes of the output that occurs in a value, whatever precedes or follows
// it. That also catches a part of a secret, a multi-line key shown with
// other lines between, or a value cut by the tail.

// minScrub is the shortest run of a value's bytes that is redacted.
const minScrub = 8

// scrub redacts secrets from text.
func scrub(text string, secrets [][]byte) string {
	grams := map[string]bool{}
	var lines []string
	for _, s := range secrets {
		for i := 0; i+minScrub <= len(s); i++ {
			grams[string(s[i:i+minScrub])] = true
		}
		for _, l := range bytes.Split(s, []byte("\n")) {
			if t := strings.TrimSpace(string(l)); len(t) >= 4 {
				lines = append(lines, t)
			}
		}
	}
	// Mark every byte inside a window of 8 that occurs in a value.
	covered := make([]bool, len(text))
	for i := 0; i+minScrub <= len(text); i++ {
		if grams[text[i:i+minScrub]] {
			for j := i; j < i+minScrub; j++ {
				covered[j] = true
			}
		}
	}
	for _, l := range lines { // short lines of a value, whole
		for off := 0; ; {
			k := strings.Index(text[off:], l)
			if k < 0 {
				break
			}
			for j := off + k; j < off+k+len(l); j++ {
				covered[j] = true
			}
			off += k + len(l)
		}
	}
	// Newlines stay, so each redacted line reads as one.
	var b strings.Builder
	for i := 0; i < len(text); {
		if !covered[i] || text[i] == '\n' {
			b.WriteByte(text[i])
			i++
			continue
		}
		for i < len(text) && covered[i] && text[i] != '\n' {
			i++
		}
		b.WriteString("[redacted]")
	}
	return b.String()
}
