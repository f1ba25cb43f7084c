package raft

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/tallyauth/tally/raft/raftpb"
)

func TestSnapshotRestore(t *testing.T) {
	cmds := workload(7, 300)
	src := openTestFSM(t)
	mustApplyResults(t, src, cmds[:200])
	wantDump, wantView := dump(t, src), viewDump(src.State())

	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Applies continue while the snapshot is pending and being persisted;
	// the snapshot is the state as of Snapshot().
	applyAll(t, src, cmds[200:250]...)
	var sink memSink
	done := make(chan error, 1)
	go func() { done <- snap.Persist(&sink) }()
	applyAll(t, src, cmds[250:]...)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	snap.Release()
	snap.Release() // idempotent
	if !sink.closed || sink.canceled {
		t.Fatalf("sink closed %v canceled %v", sink.closed, sink.canceled)
	}

	dst := openTestFSM(t)
	mustApply(t, dst, createTenant(t0, "stale")) // replaced by the restore
	if err := dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if got := dump(t, dst); got != wantDump {
		t.Fatal("restored database differs from the snapshotted one")
	}
	if got := viewDump(dst.State()); got != wantView {
		t.Fatalf("restored view differs:\n%s\nwant:\n%s", got, wantView)
	}
	if _, ok := dst.State().Tenant("stale"); ok {
		t.Fatal("restore kept old state")
	}

	// The restored replica continues with the rest of the log and converges.
	applyAll(t, dst, cmds[200:]...)
	if dump(t, dst) != dump(t, src) || viewDump(dst.State()) != viewDump(src.State()) {
		t.Fatal("replicas diverged after restore + replay")
	}
	checkViewMatchesDB(t, dst)

	// No temporary files are left behind.
	entries, err := os.ReadDir(filepath.Dir(dst.path))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "state.db" && e.Name() != "state.db"+stateMarkSuffix {
			t.Fatalf("left over: %s", e.Name())
		}
	}
}

func TestRestoreRejectsGarbage(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, tenantWithClient(t0)...)
	before, beforeView := dump(t, f), viewDump(f.State())
	for name, data := range map[string][]byte{
		"empty":   nil,
		"garbage": bytes.Repeat([]byte("not a bolt file "), 1000),
	} {
		t.Run(name, func(t *testing.T) {
			err := f.Restore(io.NopCloser(bytes.NewReader(data)))
			if err == nil || !strings.HasPrefix(err.Error(), "raft: restore") {
				t.Fatalf("err = %v", err)
			}
			if dump(t, f) != before || viewDump(f.State()) != beforeView {
				t.Fatal("failed restore changed the state")
			}
		})
	}
	// A bbolt file that is not a tally state database is refused too.
	other := filepath.Join(t.TempDir(), "other.db")
	g, err := OpenFSM(other, nil)
	if err != nil {
		t.Fatal(err)
	}
	_ = g.Close()
	db, err := bbolt.Open(other, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bucketMeta)).Put([]byte(metaSchemaVersion), u64(SchemaVersion+1))
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = db.Close()
	data, err := os.ReadFile(other)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); err == nil || !strings.Contains(err.Error(), "schema version") {
		t.Fatalf("err = %v", err)
	}
	// And the FSM still works.
	mustApply(t, f, revoke(t0, "acme", "j", t0+hour))
}

func mustApplyResults(t *testing.T, f *FSM, cmds []*raftpb.Command) {
	t.Helper()
	applyAll(t, f, cmds...)
}
