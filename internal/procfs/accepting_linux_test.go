package procfs

import "testing"

func TestEpollTargets(t *testing.T) {
	t.Parallel()
	fdinfo := []byte("pos:\t0\nflags:\t02\nmnt_id:\t16\nino:\t1057\n" +
		"tfd:        3 events:       19 data:                3  pos:0 ino:61af sdev:8\n" +
		"tfd:        7 events:        0 data:                7  pos:0 ino:61b0 sdev:8\n")
	got := epollTargets(fdinfo)
	if len(got) != 1 || got[0] != 0x61af {
		t.Fatalf("epollTargets = %x, want [61af] (the target with no events is disabled)", got)
	}
}
