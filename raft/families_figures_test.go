package raft

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/tallyauth/tally/raft/raftpb"
)

// TestFamiliesFigures measures what live refresh-token families cost: the
// state database on disk and the Go heap, after N authorization-code
// redemptions (each creates one family, one access-token record and one
// used-code record, as in production) applied through FSM.ApplyBatch in
// batches of 1000. Not part of make test:
//
//	TALLY_FIGURES=1 TALLY_FAMILIES=100000 go test -run '^TestFamiliesFigures$' -v ./raft/
func TestFamiliesFigures(t *testing.T) {
	if os.Getenv("TALLY_FIGURES") == "" {
		t.Skip("set TALLY_FIGURES=1 to measure")
	}
	n := 100_000
	if v := os.Getenv("TALLY_FAMILIES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1000 {
			t.Fatalf("TALLY_FAMILIES=%q", v)
		}
	}
	path := filepath.Join(t.TempDir(), "state.db")
	f := openTestFSMAt(t, path)
	c := testClient("t", "c1")
	c.GrantTypes = []string{"authorization_code", "refresh_token"}
	mustApply(t, f, createTenant(t0, "t"), createClient(t0, c), flowCmd(t0, &raftpb.CreateUser{User: testUser("t", "u1", "alice")}))
	size0 := fileSize(t, path)
	heap0, rss0 := heapAndRSS(t)

	id := func(kind string, i int) []byte {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		s := sha256.Sum256(append([]byte(kind), b[:]...))
		return s[:]
	}
	const batch = 1000
	for start := 0; start < n; start += batch {
		cmds := make([]*raftpb.Command, 0, batch)
		for i := start; i < min(start+batch, n); i++ {
			now := t0 + int64(i)*int64(1000)
			fam := &raftpb.Family{Tenant: "t", Id: base64.RawURLEncoding.EncodeToString(id("f", i)[:16]), ClientId: "c1", UserId: "u1",
				Scopes: []string{"openid", "offline_access"}, ExpiresUnixNano: now + 30*24*hour, IdleTimeoutNanos: 7 * 24 * hour,
				Generation: 1, CurrentHash: id("r", i)}
			cmds = append(cmds, flowCmd(now, &raftpb.RedeemCode{Tenant: "t", CodeHash: id("c", i), CodeExpiresUnixNano: now + 60*sec,
				ClientId: "c1", UserId: "u1", Family: fam,
				AccessToken: at(base64.RawURLEncoding.EncodeToString(id("j", i)[:16]), now+hour)}))
		}
		for i, r := range f.ApplyBatch(logOf(t, f.AppliedIndex()+1, cmds...)) {
			if res, ok := r.(Result); !ok || res.Err != nil || res.Grant == nil || res.Grant.Outcome != OutcomeDone {
				t.Fatalf("redemption %d: %v", start+i, r)
			}
		}
	}
	size1 := fileSize(t, path)
	heap1, rss1 := heapAndRSS(t)
	perM := func(d int64) float64 { return float64(d) / float64(n) * 1e6 / (1 << 20) }
	t.Logf("%d families: state.db %d -> %d bytes (%.0f MiB per million, %.0f B each)", n, size0, size1, perM(size1-size0), float64(size1-size0)/float64(n))
	t.Logf("Go heap in use %d -> %d bytes (%.1f MiB per million); process RSS %d -> %d KiB (%.0f MiB per million, bbolt's mmap included)",
		heap0, heap1, perM(int64(heap1)-int64(heap0)), rss0, rss1, perM((rss1-rss0)*1024))
	runtime.KeepAlive(f)
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// heapAndRSS returns the live Go heap after a collection and the
// process's resident set in KiB (Linux; 0 elsewhere).
func heapAndRSS(t *testing.T) (uint64, int64) {
	t.Helper()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	var rss int64
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				rss, _ = strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			}
		}
	}
	return ms.HeapInuse, rss
}
