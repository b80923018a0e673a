// Package words writes counted nouns for messages ("1 credential",
// "2 credentials"): one helper, so that no message says "1 credentials".
package words

import (
	"fmt"
	"strings"
)

// Plural writes n with the noun's singular or plural form.
func Plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// Verb picks a verb's form agreeing with n things: "needs" or "need".
func Verb(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// Nearest returns the candidate closest to s by edit distance, if it is
// close enough to be a likely typo (at most a third of s's length, at
// least 1, at most 3 edits); else "".
func Nearest(s string, candidates []string) string {
	best, bestD := "", min(3, max(1, len(s)/3))+1
	for _, c := range candidates {
		if d := distance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// distance is the edit distance of a and b, case-insensitive, counting an
// insertion, a deletion, a substitution or a swap of two neighbours as one
// edit (the optimal string alignment distance): "qmeu" is one edit from
// "qemu".
func distance(a, b string) int {
	a, b = strings.ToLower(a), strings.ToLower(b)
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}

// DidYouMean is "; did you mean X?" for the nearest candidate, or "".
func DidYouMean(s string, candidates []string) string {
	if n := Nearest(s, candidates); n != "" {
		return fmt.Sprintf("; did you mean %s?", n)
	}
	return ""
}
