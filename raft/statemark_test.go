package raft

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

// The state mark's decisions at open (statemark.go), one FSM at a time:
// which databases are kept and which are set aside as possibly torn.
func TestStateMarkAtOpen(t *testing.T) {
	boot := currentBoot()
	if boot == "" {
		t.Skip("no kernel boot id here: the state database is fsynced on every commit")
	}
	seed := func(t *testing.T) string {
		path := filepath.Join(t.TempDir(), "state.db")
		f, err := OpenFSM(path, nil)
		if err != nil {
			t.Fatal(err)
		}
		mustApply(t, f, createTenant(t0, "acme", sigKey("k1", t0, hour)))
		if !f.noSync {
			t.Fatal("opened with fsync on every commit although the boot is known")
		}
		f.skipCleanClose = true
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name string
		mark func(t *testing.T, path string)
		kept bool
	}{
		{"dirty, this boot (a killed process)", func(*testing.T, string) {}, true},
		{"clean, another boot", func(t *testing.T, path string) {
			if err := writeStateMark(path, stateMark{boot: "another-boot", clean: true}); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"no mark (written by an older tally, fsynced)", func(t *testing.T, path string) {
			if err := os.Remove(path + stateMarkSuffix); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"dirty, another boot (the machine went down)", func(t *testing.T, path string) {
			if err := writeStateMark(path, stateMark{boot: "another-boot"}); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"unreadable mark", func(t *testing.T, path string) {
			if err := os.WriteFile(path+stateMarkSuffix, []byte("garbage"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := seed(t)
			tc.mark(t, path)
			f := openTestFSMAt(t, path)
			_, kept := f.State().Tenant("acme")
			if kept != tc.kept {
				t.Fatalf("tenant kept: %v, want %v", kept, tc.kept)
			}
			torn, _ := filepath.Glob(path + ".torn-*")
			if tc.kept == (len(torn) != 0) {
				t.Fatalf("set aside: %v (kept %v)", torn, tc.kept)
			}
			if m, ok, err := readStateMark(path); err != nil || !ok || m.clean || m.boot != boot {
				t.Fatalf("mark while open: %+v %v %v; want dirty of this boot", m, ok, err)
			}
			if !tc.kept {
				// The set-aside file holds records as they were: an
				// erasure removes it with them (compact.go).
				mustApply(t, f, createTenant(t0, "gone"), delCmd(t0+1, &raftpb.DeleteTenant{Tenant: "gone"}))
				if torn, _ := filepath.Glob(path + ".torn-*"); len(torn) != 0 {
					t.Fatalf("still set aside after an erasure: %v", torn)
				}
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if m, ok, err := readStateMark(path); err != nil || !ok || !m.clean || m.boot != boot {
				t.Fatalf("mark after Close: %+v %v %v; want clean", m, ok, err)
			}
		})
	}

	// Without a boot id every commit is fsynced and the mark says clean.
	t.Run("no boot id", func(t *testing.T) {
		path := seed(t) // left dirty by this boot
		old := bootIDPath
		bootIDPath = filepath.Join(t.TempDir(), "absent")
		defer func() { bootIDPath = old }()
		f := openTestFSMAt(t, path)
		if f.noSync {
			t.Fatal("no boot id, yet opened without fsync")
		}
		// A dirty mark cannot be proven to be of this boot: set aside.
		if _, ok := f.State().Tenant("acme"); ok {
			t.Fatal("a dirty state database kept although the boot cannot be told")
		}
		if m, _, err := readStateMark(path); err != nil || !m.clean {
			t.Fatalf("mark: %+v, %v", m, err)
		}
	})
}
