package issuancetest

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/tallyauth/tally/issuance"
)

// Backend is an implementation of issuance.State and issuance.Revoker under
// test, with the writes a test needs to set it up, each done the
// implementation's own way: the fake (FakeBackend) stores them, the node's
// replica proposes Raft commands. Each write returns once it is visible to
// the reads.
type Backend interface {
	issuance.State
	issuance.Revoker
	// CreateTenant creates a tenant (no keys).
	CreateTenant(t testing.TB, tn issuance.Tenant)
	// CreateClient creates a client of c.Tenant.
	CreateClient(t testing.TB, c issuance.Client)
	// AddKey adds a new, unretired key to k.Tenant. Like the replicated
	// state, it retires the tenant's current keys of the same use from
	// k.NotBefore on; they expire retention later.
	AddKey(t testing.TB, k issuance.Key, retention time.Duration)
}

// RunStateConformance runs the contract of issuance.State and
// issuance.Revoker (issuance/state.go) against fresh, empty backends made
// by newBackend, one per subtest. The node runs it against its replica over
// a real Raft node and bbolt, this package against its fake, so the fake
// the issuance unit tests use cannot drift from what a node serves (as
// Dex's storage conformance tests do for its storages).
func RunStateConformance(t *testing.T, newBackend func(t *testing.T) Backend) {
	ctx := context.Background()
	for _, c := range conformanceCases {
		t.Run(c.name, func(t *testing.T) { c.run(t, ctx, newBackend(t)) })
	}
}

// conformanceCases are RunStateConformance's subtests, each on a fresh,
// empty backend.
var conformanceCases = []struct {
	name string
	run  func(t *testing.T, ctx context.Context, b Backend)
}{
	{"TenantNotFound", conformTenantNotFound},
	{"TenantRoundTrip", conformTenantRoundTrip},
	{"ClientNotFound", conformClientNotFound},
	{"ClientRoundTrip", conformClientRoundTrip},
	{"KeysNotFound", conformKeysNotFound},
	{"KeysInCreationOrderExpiredIncluded", conformKeysInCreationOrderExpiredIncluded},
	{"RevokeThenRevoked", conformRevokeThenRevoked},
}

// acme is the tenant most cases create.
var acme = issuance.Tenant{ID: "acme", DisplayName: "Acme Inc.", SigningAlg: "ES256"}

// conformTenantNotFound: an unknown tenant is ErrNotFound.
func conformTenantNotFound(t *testing.T, ctx context.Context, b Backend) {
	if _, err := b.Tenant(ctx, "nope"); !errors.Is(err, issuance.ErrNotFound) {
		t.Fatalf("unknown tenant: %v, want ErrNotFound", err)
	}
}

// conformTenantRoundTrip: a created tenant reads back as created.
func conformTenantRoundTrip(t *testing.T, ctx context.Context, b Backend) {
	b.CreateTenant(t, acme)
	got, err := b.Tenant(ctx, "acme")
	if err != nil || !reflect.DeepEqual(got, acme) {
		t.Fatalf("Tenant = %+v, %v; want %+v", got, err, acme)
	}
}

// conformClientNotFound: an unknown client, or a known id in an unknown tenant, is ErrNotFound.
func conformClientNotFound(t *testing.T, ctx context.Context, b Backend) {
	b.CreateTenant(t, acme)
	b.CreateClient(t, sampleClient("acme", "c1"))
	for _, tc := range []struct{ tenant, id string }{{"acme", "nope"}, {"nope", "c1"}} {
		if _, err := b.Client(ctx, tc.tenant, tc.id); !errors.Is(err, issuance.ErrNotFound) {
			t.Errorf("Client(%s, %s): %v, want ErrNotFound", tc.tenant, tc.id, err)
		}
	}
}

// conformClientRoundTrip: clients read back as created, disabled ones too, and the same id in another tenant is another client.
func conformClientRoundTrip(t *testing.T, ctx context.Context, b Backend) {
	b.CreateTenant(t, acme)
	b.CreateTenant(t, issuance.Tenant{ID: "other", DisplayName: "Other", SigningAlg: "EdDSA"})
	want := sampleClient("acme", "c1")
	b.CreateClient(t, want)
	off := sampleClient("acme", "off")
	off.Disabled = true
	b.CreateClient(t, off)
	// The same id in another tenant is another client.
	o := sampleClient("other", "c1")
	o.Name = "other's"
	b.CreateClient(t, o)
	for _, w := range []issuance.Client{want, off, o} {
		got, err := b.Client(ctx, w.Tenant, w.ID)
		if err != nil {
			t.Fatalf("Client(%s, %s): %v", w.Tenant, w.ID, err)
		}
		if !sameClient(got, w) {
			t.Errorf("Client(%s, %s) =\n%+v\nwant\n%+v", w.Tenant, w.ID, got, w)
		}
	}
}

// conformKeysNotFound: the keys of an unknown tenant are ErrNotFound; a tenant without keys has none.
func conformKeysNotFound(t *testing.T, ctx context.Context, b Backend) {
	if _, err := b.Keys(ctx, "nope"); !errors.Is(err, issuance.ErrNotFound) {
		t.Fatalf("Keys of an unknown tenant: %v, want ErrNotFound", err)
	}
	b.CreateTenant(t, acme)
	if ks, err := b.Keys(ctx, "acme"); err != nil || len(ks) != 0 {
		t.Fatalf("Keys of a tenant without keys: %v, %v", ks, err)
	}
}

// conformKeysInCreationOrderExpiredIncluded: keys are listed in creation order, retired and expired ones included, with their times.
func conformKeysInCreationOrderExpiredIncluded(t *testing.T, ctx context.Context, b Backend) {
	b.CreateTenant(t, acme)
	now := time.Now().Truncate(time.Second)
	// Kids in reverse alphabetical order: the order is creation, not kid.
	k1 := sampleKey("acme", "z-first", "sig", now.Add(-3*time.Hour))
	k2 := sampleKey("acme", "m-seal", "seal", now.Add(-3*time.Hour))
	k3 := sampleKey("acme", "a-second", "sig", now.Add(-2*time.Hour))
	b.AddKey(t, k1, time.Hour)
	b.AddKey(t, k2, time.Hour)
	b.AddKey(t, k3, time.Hour)
	ks, err := b.Keys(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range ks {
		kids = append(kids, k.ID)
	}
	if !slices.Equal(kids, []string{"z-first", "m-seal", "a-second"}) {
		t.Fatalf("Keys = %v, want creation order", kids)
	}
	// k1 was retired by k3 and expired an hour ago: still listed (a
	// sweep removes it), with its times, so callers can skip it.
	k1.RetiredAt, k1.ExpiresAt = k3.NotBefore, k3.NotBefore.Add(time.Hour)
	for i, w := range []issuance.Key{k1, k2, k3} {
		if !sameKey(ks[i], w) {
			t.Errorf("key %d =\n%+v\nwant\n%+v", i, ks[i], w)
		}
	}
	if !ks[0].ExpiresAt.Before(now) {
		t.Errorf("the first key should have expired: %v", ks[0].ExpiresAt)
	}
}

// conformRevokeThenRevoked: a revocation is visible once Revoke returns, only for its tenant and jti, and revoking again is no error.
func conformRevokeThenRevoked(t *testing.T, ctx context.Context, b Backend) {
	b.CreateTenant(t, acme)
	b.CreateTenant(t, issuance.Tenant{ID: "other", DisplayName: "Other", SigningAlg: "ES256"})
	if b.Revoked(ctx, "acme", "j1") {
		t.Fatal("an unknown jti is revoked")
	}
	r := issuance.Revocation{Tenant: "acme", JTI: "j1", ClientID: "c1", Subject: "alice",
		ExpiresAt: time.Now().Add(time.Hour), Reason: "test"}
	if err := b.Revoke(ctx, r); err != nil {
		t.Fatal(err)
	}
	// Revoke returns once the revocation is applied: read your write.
	if !b.Revoked(ctx, "acme", "j1") {
		t.Fatal("not revoked right after Revoke returned")
	}
	if b.Revoked(ctx, "other", "j1") || b.Revoked(ctx, "nope", "j1") || b.Revoked(ctx, "acme", "j2") {
		t.Fatal("a revocation leaked to another tenant or jti")
	}
	// Revoking again is not an error.
	if err := b.Revoke(ctx, r); err != nil {
		t.Fatalf("second Revoke: %v", err)
	}
}

func sampleClient(tenant, id string) issuance.Client {
	return issuance.Client{
		Tenant: tenant, ID: id, Name: "client " + id,
		Secrets: []issuance.SecretHash{
			{Hash: []byte("0123456789abcdef0123456789abcdef")},
			{Hash: []byte("fedcba9876543210fedcba9876543210"), ExpiresAt: time.Unix(2_000_000_000, 0)},
		},
		GrantTypes:     []string{"client_credentials"},
		Scopes:         []string{"read:orders", "write:orders"},
		Audiences:      []string{"https://orders.example"},
		AccessTokenTTL: 10 * time.Minute,
		TokenFormat:    issuance.FormatJWT,
		RedirectURIs:   []string{"https://app.example/cb"},
	}
}

func sampleKey(tenant, kid, use string, notBefore time.Time) issuance.Key {
	k := issuance.Key{
		Tenant: tenant, ID: kid, Use: issuance.KeyUse(use), Alg: "A256GCM",
		EncryptedPrivate: []byte("sealed " + kid), NotBefore: notBefore,
	}
	if use == "sig" {
		k.Alg, k.PublicKey = "ES256", []byte("public "+kid)
	}
	return k
}

// sameClient compares clients, times by instant.
func sameClient(a, b issuance.Client) bool {
	if len(a.Secrets) != len(b.Secrets) {
		return false
	}
	for i := range a.Secrets {
		if string(a.Secrets[i].Hash) != string(b.Secrets[i].Hash) || !a.Secrets[i].ExpiresAt.Equal(b.Secrets[i].ExpiresAt) {
			return false
		}
	}
	a.Secrets, b.Secrets = nil, nil
	return reflect.DeepEqual(normalize(a), normalize(b))
}

// normalize maps empty slices to nil.
func normalize(c issuance.Client) issuance.Client {
	for _, l := range []*[]string{&c.GrantTypes, &c.Scopes, &c.Audiences, &c.RedirectURIs} {
		if len(*l) == 0 {
			*l = nil
		}
	}
	return c
}

// sameKey compares keys, times by instant.
func sameKey(a, b issuance.Key) bool {
	if !a.NotBefore.Equal(b.NotBefore) || !a.RetiredAt.Equal(b.RetiredAt) || !a.ExpiresAt.Equal(b.ExpiresAt) {
		return false
	}
	a.NotBefore, a.RetiredAt, a.ExpiresAt = time.Time{}, time.Time{}, time.Time{}
	b.NotBefore, b.RetiredAt, b.ExpiresAt = time.Time{}, time.Time{}, time.Time{}
	if len(a.PublicKey) == 0 && len(b.PublicKey) == 0 {
		a.PublicKey, b.PublicKey = nil, nil
	}
	return reflect.DeepEqual(a, b)
}

// FakeBackend is the Backend of the fake: a State and its Revoker.
type FakeBackend struct {
	*State
	Rev *Revoker
}

// NewFakeBackend returns an empty FakeBackend.
func NewFakeBackend() FakeBackend {
	st := NewState()
	return FakeBackend{State: st, Rev: NewRevoker(st)}
}

// Revoke implements issuance.Revoker.
func (f FakeBackend) Revoke(ctx context.Context, r issuance.Revocation) error {
	return f.Rev.Revoke(ctx, r)
}

// CreateTenant implements Backend.
func (f FakeBackend) CreateTenant(_ testing.TB, tn issuance.Tenant) { f.PutTenant(tn) }

// CreateClient implements Backend.
func (f FakeBackend) CreateClient(_ testing.TB, c issuance.Client) { f.PutClient(c) }

// AddKey implements Backend.
func (f FakeBackend) AddKey(_ testing.TB, k issuance.Key, retention time.Duration) {
	f.State.AddKey(k, retention)
}
