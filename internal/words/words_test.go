package words

import "testing"

func TestNearest(t *testing.T) {
	cands := []string{"admin/password", "admin/user", "vcpu", "mem", "vault-01"}
	for _, tc := range []struct{ in, want string }{
		{"admin/pasword", "admin/password"},
		{"mme", "mem"},
		{"vcpus", "vcpu"},
		{"vault01", "vault-01"},
		{"mem", "mem"},
		{"Mem", "mem"},
		{"xyz", ""},
		{"m", ""},
		{"admin/zzzzzzzz", ""},
	} {
		if got := Nearest(tc.in, cands); got != tc.want {
			t.Errorf("Nearest(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPlural(t *testing.T) {
	if got := Plural(1, "credential", "credentials") + " " + Verb(1, "needs", "need"); got != "1 credential needs" {
		t.Error(got)
	}
	if got := Plural(0, "credential", "credentials"); got != "0 credentials" {
		t.Error(got)
	}
}
