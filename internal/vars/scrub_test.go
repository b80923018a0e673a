package vars

import (
	"strings"
	"testing"
)

func TestScrub(t *testing.T) {
	key := "-----BEGIN KEY-----\nAAAABBBBCCCCDDDDEEEE\nFFFFGGGGHHHH\n-----END KEY-----\n"
	tests := []struct{ name, text, want string }{
		{"whole value", "x " + key + "y", "x [redacted]\n[redacted]\n[redacted]\n[redacted]\ny"},
		{"one line of it", "got FFFFGGGGHHHH here", "got [redacted] here"},
		{"a piece of a line", "piece=BBBBCCCCD!", "piece=[redacted]!"},
		{"seven bytes stay", "BBBBCCC", "BBBBCCC"},
		{"a short line of a value, whole", "pin: 4711\n", "pin: [redacted]\n"},
		{"nothing of it", "all fine", "all fine"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := scrub(tt.text, [][]byte{[]byte(key), []byte("4711")}); got != tt.want {
				t.Errorf("scrub(%q) =\n%q, want\n%q", tt.text, got, tt.want)
			}
			if strings.Contains(scrub(tt.text, [][]byte{[]byte(key)}), "CCCCDDDD") {
				t.Error("an 8-byte run of the key survived")
			}
		})
	}
}
