package issuance_test

import (
	"context"
	"crypto/rand"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
)

// TestFlowValuesRotateWithTheSealingKey (issue 11): session cookies (and
// the login forms and codes, sealed the same way) are sealed with a key
// derived from the tenant's current sealing key and name it; after a
// rotation new values use the new key while old ones open until the old
// key expires; a value does not open for another tenant, for another
// purpose, or with its kid changed; while ZTv2 says no (a
// rolling upgrade) the static key is used, and its values keep opening.
func TestFlowValuesRotateWithTheSealingKey(t *testing.T) {
	var rotating atomic.Bool
	rotating.Store(true)
	e := newEnv(t, func(c *issuance.Config) {
		c.Users, c.Grants = &fakeUsers{}, &scriptedGrants{}
		c.ZTv2 = func(context.Context) bool { return rotating.Load() }
	})
	_, seal1 := e.addTenant("acme", issuance.AlgES256)
	e.addTenant("other", issuance.AlgES256)
	ctx := context.Background()
	exp := e.clock.Now().Add(8 * time.Hour).Unix()

	v1, err := e.srv.SealSessionForTest(ctx, "acme", "alice", exp)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(v1, "f2."+seal1.ID+".") {
		t.Fatalf("session %q not sealed under the current sealing key %s", v1, seal1.ID)
	}
	if u, err := e.srv.OpenSessionForTest(ctx, "acme", v1); err != nil || u != "alice" {
		t.Fatalf("open: %q %v", u, err)
	}
	if _, err := e.srv.OpenSessionForTest(ctx, "other", v1); err == nil {
		t.Error("opened for another tenant")
	}
	if err := e.srv.OpenPendingForTest(ctx, "acme", v1); err == nil {
		t.Error("a session opened as a login form")
	}

	// Rotation: the new key seals, the old one still opens until it expires.
	seal2 := e.addKeyRetained("acme", 2*time.Hour)
	v2, err := e.srv.SealSessionForTest(ctx, "acme", "bob", exp)
	if err != nil || !strings.HasPrefix(v2, "f2."+seal2.ID+".") {
		t.Fatalf("after rotation: %q %v, want sealed under %s", v2, err, seal2.ID)
	}
	if u, err := e.srv.OpenSessionForTest(ctx, "acme", v1); err != nil || u != "alice" {
		t.Fatalf("value of the retired key: %q %v", u, err)
	}
	forged := "f2." + seal2.ID + strings.TrimPrefix(v1, "f2."+seal1.ID)
	if _, err := e.srv.OpenSessionForTest(ctx, "acme", forged); err == nil {
		t.Error("a value opened under another kid")
	}
	e.clock.Advance(3 * time.Hour)
	if _, err := e.srv.OpenSessionForTest(ctx, "acme", v1); err == nil {
		t.Error("value of an expired key still opens")
	}
	if u, err := e.srv.OpenSessionForTest(ctx, "acme", v2); err != nil || u != "bob" {
		t.Fatalf("value of the current key: %q %v", u, err)
	}

	// Not every node can open the new form: the static key seals, and its
	// values still open once the new form is on.
	rotating.Store(false)
	old, err := e.srv.SealSessionForTest(ctx, "acme", "carol", exp)
	if err != nil || strings.Contains(old, ".") {
		t.Fatalf("static seal: %q %v", old, err)
	}
	rotating.Store(true)
	if u, err := e.srv.OpenSessionForTest(ctx, "acme", old); err != nil || u != "carol" {
		t.Fatalf("value of the static key: %q %v", u, err)
	}
}

// addKeyRetained adds a current sealing key as a rotation does: the
// previous one retires now and expires retention later.
func (e *env) addKeyRetained(tenant string, retention time.Duration) issuance.Key {
	e.t.Helper()
	k, err := issuance.GenerateKey(e.kek, rand.Reader, tenant, issuance.AlgA256GCM, issuance.UseSeal, e.clock.Now(), e.clock.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	e.st.AddKey(k, retention)
	return k
}
