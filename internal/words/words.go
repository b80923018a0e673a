// Package words writes counted nouns for messages ("1 credential",
// "2 credentials"): one helper, so that no message says "1 credentials".
package words

import "fmt"

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
