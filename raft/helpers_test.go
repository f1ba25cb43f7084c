package raft

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// t0 is the command time tests start from.
const t0 = int64(1_700_000_000_000_000_000)

const (
	sec  = int64(time.Second)
	hour = int64(time.Hour)
)

func openTestFSM(t testing.TB) *FSM {
	t.Helper()
	return openTestFSMAt(t, filepath.Join(t.TempDir(), "state.db"))
}

func openTestFSMAt(t testing.TB, path string) *FSM {
	t.Helper()
	f, err := OpenFSM(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

func command(now int64, op any) *raftpb.Command {
	c := &raftpb.Command{Version: CommandVersion, TimeUnixNano: now}
	switch o := op.(type) {
	case *raftpb.CreateTenant:
		c.Op = &raftpb.Command_CreateTenant{CreateTenant: o}
	case *raftpb.CreateClient:
		c.Op = &raftpb.Command_CreateClient{CreateClient: o}
	case *raftpb.UpdateClient:
		c.Op = &raftpb.Command_UpdateClient{UpdateClient: o}
	case *raftpb.RotateClientSecret:
		c.Op = &raftpb.Command_RotateClientSecret{RotateClientSecret: o}
	case *raftpb.SetClientDisabled:
		c.Op = &raftpb.Command_SetClientDisabled{SetClientDisabled: o}
	case *raftpb.AddKeys:
		c.Op = &raftpb.Command_AddKeys{AddKeys: o}
	case *raftpb.RevokeToken:
		c.Op = &raftpb.Command_RevokeToken{RevokeToken: o}
	case *raftpb.Sweep:
		c.Op = &raftpb.Command_Sweep{Sweep: o}
	case nil:
	default:
		panic(fmt.Sprintf("command: %T", op))
	}
	return c
}

func withRequestID(c *raftpb.Command, id string) *raftpb.Command {
	c.RequestId = id
	return c
}

func sigKey(kid string, notBefore, retention int64) *raftpb.Key {
	return &raftpb.Key{
		Kid: kid, Alg: "ES256", Use: "sig",
		PublicKey: []byte("pub-" + kid), EncryptedPrivate: []byte("priv-" + kid),
		NotBeforeUnixNano: notBefore, RetentionNanos: retention,
	}
}

func sealKey(kid string, notBefore, retention int64) *raftpb.Key {
	return &raftpb.Key{
		Kid: kid, Alg: "A256GCM", Use: "seal",
		EncryptedPrivate:  []byte("priv-" + kid),
		NotBeforeUnixNano: notBefore, RetentionNanos: retention,
	}
}

func createTenant(now int64, id string, keys ...*raftpb.Key) *raftpb.Command {
	return command(now, &raftpb.CreateTenant{
		Tenant: &raftpb.Tenant{Id: id, DisplayName: "Tenant " + id, SigningAlg: "ES256"},
		Keys:   keys,
	})
}

func testClient(tenant, id string) *raftpb.Client {
	return &raftpb.Client{
		Tenant: tenant, Id: id, Name: "client " + id,
		Secrets:               []*raftpb.SecretHash{{Hash: []byte("hash-1-" + id)}},
		GrantTypes:            []string{"client_credentials"},
		Scopes:                []string{"read", "write"},
		Audiences:             []string{"api"},
		AccessTokenTtlSeconds: 600,
		TokenFormat:           "jwt",
	}
}

func createClient(now int64, c *raftpb.Client) *raftpb.Command {
	return command(now, &raftpb.CreateClient{Client: c})
}

func revoke(now int64, tenant, jti string, expires int64) *raftpb.Command {
	return command(now, &raftpb.RevokeToken{Revocation: &raftpb.Revocation{
		Tenant: tenant, Jti: jti, ClientId: "c1", ExpiresUnixNano: expires, Reason: "test",
	}})
}

func sweep(now int64) *raftpb.Command { return command(now, &raftpb.Sweep{}) }

// logOf encodes commands as consecutive log entries from index first.
func logOf(t testing.TB, first uint64, cmds ...*raftpb.Command) []*hraft.Log {
	t.Helper()
	logs := make([]*hraft.Log, len(cmds))
	for i, c := range cmds {
		data, err := marshalOpts.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		logs[i] = &hraft.Log{Index: first + uint64(i), Term: 1, Type: hraft.LogCommand, Data: data}
	}
	return logs
}

// applyAll applies cmds one entry at a time after the FSM's applied index
// and returns their results.
func applyAll(t testing.TB, f *FSM, cmds ...*raftpb.Command) []Result {
	t.Helper()
	logs := logOf(t, f.AppliedIndex()+1, cmds...)
	out := make([]Result, len(logs))
	for i, l := range logs {
		r, ok := f.Apply(l).(Result)
		if !ok {
			t.Fatalf("entry %d: response %T", l.Index, f.Apply(l))
		}
		out[i] = r
	}
	return out
}

func mustApply(t testing.TB, f *FSM, cmds ...*raftpb.Command) {
	t.Helper()
	for i, r := range applyAll(t, f, cmds...) {
		if r.Err != nil {
			t.Fatalf("command %d (%v): %v", i, cmds[i].GetOp(), r.Err)
		}
	}
}

// dump renders every bucket, key and value of the state database, sorted.
func dump(t testing.TB, f *FSM) string {
	t.Helper()
	var b strings.Builder
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.db.View(func(tx *bbolt.Tx) error {
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

// domainDump is dump without the meta bucket (applied index and term).
func domainDump(t testing.TB, f *FSM) string {
	t.Helper()
	d := dump(t, f)
	start := strings.Index(d, "[meta]\n")
	if start < 0 {
		return d
	}
	end := strings.Index(d[start+1:], "\n[")
	if end < 0 {
		return d[:start]
	}
	return d[:start] + d[start+1+end+1:]
}

// viewDump renders every record of a State.
func viewDump(s *State) string {
	var b strings.Builder
	enc := func(m proto.Message) string {
		v, err := marshalOpts.Marshal(m)
		if err != nil {
			panic(err)
		}
		return fmt.Sprintf("%x", v)
	}
	for _, tn := range s.Tenants() {
		fmt.Fprintf(&b, "tenant %s\n", enc(tn))
		for _, c := range s.Clients(tn.Id) {
			fmt.Fprintf(&b, " client %s\n", enc(c))
		}
		for _, k := range s.Keys(tn.Id) {
			fmt.Fprintf(&b, " key %s\n", enc(k))
		}
		for _, r := range s.Revocations(tn.Id) {
			fmt.Fprintf(&b, " rev %s\n", enc(r))
		}
	}
	fmt.Fprintf(&b, "applied %d\n", s.AppliedIndex())
	return b.String()
}

// checkViewMatchesDB asserts the incrementally maintained view equals one
// rebuilt from the database.
func checkViewMatchesDB(t testing.TB, f *FSM) {
	t.Helper()
	f.mu.Lock()
	tenants, applied, err := readView(f.db)
	f.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	fresh := newState()
	fresh.replace(tenants, applied)
	if got, want := viewDump(f.State()), viewDump(fresh); got != want {
		t.Fatalf("view differs from database:\nview:\n%s\ndb:\n%s", got, want)
	}
}

// memSink is an in-memory hraft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	closed, canceled bool
}

func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.canceled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

func kids(keys []*raftpb.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.Kid
	}
	return out
}

func removeFile(path string) error { return os.Remove(path) }

// writeGolden writes the golden command files when the test runs with
// -update.
func writeGolden(t *testing.T, golden []struct {
	name string
	cmd  *raftpb.Command
}) {
	t.Helper()
	if !*update {
		return
	}
	if err := os.MkdirAll("testdata", 0o755); err != nil {
		t.Fatal(err)
	}
	for _, g := range golden {
		data, err := marshalOpts.Marshal(g.cmd)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(goldenPath(g.name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// applyGolden decodes each golden file, checks that it is its command at
// version 1, and applies it to f: it must succeed (a grant with outcome
// done). test names the test that writes the files (-update).
func applyGolden(t *testing.T, f *FSM, test string, golden []struct {
	name string
	cmd  *raftpb.Command
}) {
	t.Helper()
	for _, g := range golden {
		data, err := os.ReadFile(goldenPath(g.name))
		if err != nil {
			t.Fatalf("%s: %v (run go test -run %s -update)", g.name, err, test)
		}
		got := new(raftpb.Command)
		if err := proto.Unmarshal(data, got); err != nil {
			t.Fatalf("%s: %v", g.name, err)
		}
		if got.Version != 1 || !proto.Equal(got, g.cmd) {
			t.Fatalf("%s decodes to\n%v\nwant\n%v", g.name, got, g.cmd)
		}
		res := applyAll(t, f, got)[0]
		if res.Err != nil || (res.Grant != nil && res.Grant.Outcome != OutcomeDone) {
			t.Fatalf("%s: %v %v", g.name, res.Err, res.Grant)
		}
	}
}
