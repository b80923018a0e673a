package vars

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// userTasks counts what RLIMIT_NPROC counts; ps -L lists the same tasks.
func TestUserTasksMatchesPs(t *testing.T) {
	out, err := exec.Command("ps", "-eLo", "ruid=").Output()
	if err != nil {
		t.Skip("no ps:", err)
	}
	uid := strconv.Itoa(os.Getuid())
	want := 0
	for _, f := range strings.Fields(string(out)) {
		if f == uid {
			want++
		}
	}
	got := userTasks(os.Getuid())
	// Tasks come and go between the two counts (ps itself is one).
	if got < want-5 || got > want+5 {
		t.Errorf("userTasks = %d, ps counts %d", got, want)
	}
}
