package spec

import "testing"

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"1", 1}, {"512B", 512}, {"64MiB", 64 << 20}, {"64M", 64 << 20},
		{"2GiB", 2 << 30}, {"3K", 3 << 10}, {"10 KiB", 10 << 10},
		{"", 0}, {"lots", 0}, {"-1MiB", 0}, {"0", 0}, {"1TiB", 0}, {"1.5GiB", 0},
	} {
		got, err := ParseSize(tc.in)
		if tc.want == 0 {
			if err == nil {
				t.Errorf("ParseSize(%q) = %d, want an error", tc.in, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestSettingsLimits(t *testing.T) {
	s, err := ParseSettings("credvm.toml", []byte("[limits]\noutput = \"1MiB\"\nprocesses = 7\n"))
	if err != nil {
		t.Fatal(err)
	}
	got := s.GeneratorLimits()
	want := GeneratorLimits{Output: 1 << 20, Files: DefaultLimits.Files, Processes: 7, Memory: DefaultLimits.Memory}
	if got != want {
		t.Errorf("limits = %+v, want %+v", got, want)
	}
	if _, err := ParseSettings("credvm.toml", []byte("[limits]\nfiles = -3\n")); err == nil {
		t.Error("negative files limit accepted")
	}
}
