package raft_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
	"github.com/tallyauth/tally/raft/rafttest"
)

func diskLogs(t *testing.T, first uint64, cmds ...*raftpb.Command) []*hraft.Log {
	t.Helper()
	out := make([]*hraft.Log, len(cmds))
	for i, c := range cmds {
		data, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = &hraft.Log{Index: first + uint64(i), Term: 1, Type: hraft.LogCommand, Data: data}
	}
	return out
}

func diskTenant(now int64) *raftpb.Command {
	return &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: now, Op: &raftpb.Command_CreateTenant{CreateTenant: &raftpb.CreateTenant{
		Tenant: &raftpb.Tenant{Id: "t1", DisplayName: "T1", SigningAlg: "ES256"},
		Keys: []*raftpb.Key{
			{Kid: "k1", Alg: "ES256", Use: "sig", PublicKey: []byte("pub"), EncryptedPrivate: []byte("priv"), NotBeforeUnixNano: now, RetentionNanos: int64(time.Hour)},
			{Kid: "s1", Alg: "A256GCM", Use: "seal", EncryptedPrivate: []byte("priv"), NotBeforeUnixNano: now, RetentionNanos: int64(time.Hour)},
		},
	}}}
}

// diskRevocations are n revocations with bulky reasons, so that a batch of
// them needs fresh pages of the state database.
func diskRevocations(now int64, prefix string, n int) []*raftpb.Command {
	out := make([]*raftpb.Command, n)
	for i := range out {
		out[i] = &raftpb.Command{Version: raft.CommandVersion, TimeUnixNano: now, RequestId: fmt.Sprintf("%s-%d", prefix, i),
			Op: &raftpb.Command_RevokeToken{RevokeToken: &raftpb.RevokeToken{Revocation: &raftpb.Revocation{
				Tenant: "t1", Jti: fmt.Sprintf("%s-%d", prefix, i), ClientId: "c1",
				ExpiresUnixNano: now + int64(time.Hour), Reason: strings.Repeat("r", 2048),
			}}}}
	}
	return out
}

// contents renders every key and value of a closed state database, for
// comparing two replicas record by record.
func contents(t *testing.T, path string) string {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var b strings.Builder
	err = db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bbolt.Bucket) error {
			fmt.Fprintf(&b, "[%s]\n", name)
			return bk.ForEach(func(k, v []byte) error {
				fmt.Fprintf(&b, "%x=%x\n", k, v)
				return nil
			})
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestFSMWaitsForDiskSpace: on a full file system (a size-capped tmpfs) the
// FSM does not panic; it reports a storage fault, applies nothing of the
// waiting batch, and applies exactly that batch once space is freed, giving
// the same database as a replica that never ran out of space. Halted while
// waiting, it applies nothing more.
func TestFSMWaitsForDiskSpace(t *testing.T) {
	disk := rafttest.MountSmallDisk(t, 8<<20)
	path := filepath.Join(disk.Dir, "state.db")
	f, err := raft.OpenFSM(path, rafttest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			f.Halt()
			_ = f.Close()
		}
	})
	refPath := filepath.Join(t.TempDir(), "state.db")
	ref, err := raft.OpenFSM(refPath, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()

	now := time.Now().UnixNano()
	first := diskLogs(t, 1, diskTenant(now))
	f.ApplyBatch(first)
	ref.ApplyBatch(first)

	disk.Fill(0)
	batch := diskLogs(t, 2, diskRevocations(now, "a", 300)...)
	done := make(chan []any, 1)
	go func() { done <- f.ApplyBatch(batch) }()
	rafttest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, ok := f.StorageFault(); !ok {
			return errors.New("no storage fault reported yet")
		}
		return nil
	})
	sf, _ := f.StorageFault()
	if !errors.Is(sf, raft.ErrNoSpace) && !strings.Contains(sf.Error(), "no space left") {
		t.Fatalf("storage fault %v, want no space", sf)
	}
	select {
	case <-done:
		t.Fatal("ApplyBatch returned on a full disk")
	default:
	}
	if got := f.AppliedIndex(); got != 1 {
		t.Fatalf("applied index %d while waiting for space, want 1", got)
	}
	if f.State().Revoked("t1", "a-0") {
		t.Fatal("part of the waiting batch is visible")
	}

	disk.Free()
	var resp []any
	select {
	case resp = <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("ApplyBatch still waiting after space was freed")
	}
	for i, r := range resp {
		res, ok := r.(raft.Result)
		if !ok || res.Err != nil || res.Index != batch[i].Index {
			t.Fatalf("entry %d: response %#v", batch[i].Index, r)
		}
	}
	if _, ok := f.StorageFault(); ok {
		t.Fatal("storage fault still reported after the batch committed")
	}
	if got := f.AppliedIndex(); got != batch[len(batch)-1].Index {
		t.Fatalf("applied index %d, want %d", got, batch[len(batch)-1].Index)
	}
	ref.ApplyBatch(batch)

	// Halted while waiting: nothing applied, and nothing after it either
	// (a later batch must not leave a gap).
	disk.Fill(0)
	next := diskLogs(t, batch[len(batch)-1].Index+1, diskRevocations(now, "b", 300)...)
	go func() { done <- f.ApplyBatch(next) }()
	rafttest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if _, ok := f.StorageFault(); !ok {
			return errors.New("no storage fault reported yet")
		}
		return nil
	})
	f.Halt()
	select {
	case resp = <-done:
	case <-time.After(rafttest.Timeout):
		t.Fatal("ApplyBatch still waiting after Halt")
	}
	for i, r := range resp {
		if !errors.Is(r.(error), raft.ErrClosed) {
			t.Fatalf("entry %d after Halt: %#v, want ErrClosed", next[i].Index, r)
		}
	}
	disk.Free()
	later := diskLogs(t, next[len(next)-1].Index+1, diskRevocations(now, "c", 1)...)
	if r := f.ApplyBatch(later)[0]; !errors.Is(r.(error), raft.ErrClosed) {
		t.Fatalf("batch after an abandoned one: %#v, want ErrClosed", r)
	}
	if got, want := f.AppliedIndex(), batch[len(batch)-1].Index; got != want {
		t.Fatalf("applied index %d after Halt, want %d", got, want)
	}

	closed = true
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ref.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := contents(t, path), contents(t, refPath); got != want {
		t.Fatal("the replica that waited for space differs from the one that did not")
	}
}
