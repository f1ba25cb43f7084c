package raft

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	hraft "github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// fsmCase is one row of the FSM conformance suite: setup commands (which
// must succeed), then cmd with its expected outcome and a check of the view.
type fsmCase struct {
	name  string
	setup []*raftpb.Command
	cmd   *raftpb.Command
	want  error
	check func(t *testing.T, s *State)
}

func tenantWithClient(now int64) []*raftpb.Command {
	return []*raftpb.Command{
		createTenant(now, "acme", sigKey("k1", now, hour), sealKey("s1", now, hour)),
		createClient(now, testClient("acme", "c1")),
	}
}

func client(t *testing.T, s *State, tenant, id string) *raftpb.Client {
	t.Helper()
	c, ok := s.Client(tenant, id)
	if !ok {
		t.Fatalf("client %s/%s not found", tenant, id)
	}
	return c
}

func secretHashes(c *raftpb.Client) []string {
	out := make([]string, len(c.Secrets))
	for i, s := range c.Secrets {
		out[i] = string(s.Hash)
	}
	return out
}

func TestFSMConformance(t *testing.T) {
	now := t0 + 100*sec
	update := func(c *raftpb.Client, expected uint64) *raftpb.Command {
		return command(now, &raftpb.UpdateClient{Client: c, ExpectedRevision: expected})
	}
	rotate := func(at int64, hash string, prevExpires int64) *raftpb.Command {
		return command(at, &raftpb.RotateClientSecret{
			Tenant: "acme", ClientId: "c1",
			NewSecret:               &raftpb.SecretHash{Hash: []byte(hash)},
			PreviousExpiresUnixNano: prevExpires,
		})
	}
	disable := func(tenant, id string, d bool) *raftpb.Command {
		return command(now, &raftpb.SetClientDisabled{Tenant: tenant, ClientId: id, Disabled: d})
	}
	addKeys := func(tenant string, keys ...*raftpb.Key) *raftpb.Command {
		return command(now, &raftpb.AddKeys{Tenant: tenant, Keys: keys})
	}
	changed := testClient("acme", "c1")
	changed.Name = "renamed"
	changed.Scopes = []string{"read"}
	changed.Secrets = []*raftpb.SecretHash{{Hash: []byte("injected")}}
	changed.Public = true
	changed.Disabled = true
	changed.CreatedUnixNano = 1
	changed.Revision = 99

	cases := []fsmCase{
		// CreateTenant
		{
			name: "create tenant",
			cmd:  createTenant(now, "acme", sigKey("k1", 0, hour), sealKey("s1", now+sec, hour)),
			check: func(t *testing.T, s *State) {
				tn, ok := s.Tenant("acme")
				if !ok || tn.CreatedUnixNano != now || tn.DisplayName != "Tenant acme" {
					t.Fatalf("tenant = %v, %v", tn, ok)
				}
				keys := s.Keys("acme")
				if got := kids(keys); !slices.Equal(got, []string{"k1", "s1"}) {
					t.Fatalf("keys = %v", got)
				}
				for _, k := range keys {
					if k.Tenant != "acme" || k.CreatedUnixNano != now || k.RetiredUnixNano != 0 {
						t.Fatalf("key = %v", k)
					}
				}
				if keys[0].NotBeforeUnixNano != now || keys[1].NotBeforeUnixNano != now+sec {
					t.Fatalf("not_before = %d, %d", keys[0].NotBeforeUnixNano, keys[1].NotBeforeUnixNano)
				}
			},
		},
		{
			name: "create tenant with next signing key retires the first at its not_before",
			cmd:  createTenant(now, "acme", sigKey("k1", now, 10*sec), sigKey("k2", now+60*sec, hour)),
			check: func(t *testing.T, s *State) {
				keys := s.Keys("acme")
				if keys[0].RetiredUnixNano != now+60*sec || keys[0].ExpiresUnixNano != now+70*sec {
					t.Fatalf("k1 = %v", keys[0])
				}
				if keys[1].RetiredUnixNano != 0 || keys[1].ExpiresUnixNano != 0 {
					t.Fatalf("k2 = %v", keys[1])
				}
			},
		},
		{name: "create tenant twice", setup: []*raftpb.Command{createTenant(now, "acme")}, cmd: createTenant(now, "acme"), want: ErrExists},
		{name: "create tenant bad id", cmd: createTenant(now, "Acme/x"), want: ErrInvalid},
		{name: "create tenant bad alg", cmd: command(now, &raftpb.CreateTenant{Tenant: &raftpb.Tenant{Id: "acme", SigningAlg: "HS256"}}), want: ErrInvalid},
		{name: "create tenant no tenant", cmd: command(now, &raftpb.CreateTenant{}), want: ErrInvalid},
		{name: "create tenant duplicate kid", cmd: createTenant(now, "acme", sigKey("k1", now, 0), sealKey("k1", now, 0)), want: ErrInvalid},
		{name: "create tenant bad key use", cmd: createTenant(now, "acme", &raftpb.Key{Kid: "k", Alg: "ES256", Use: "enc", PublicKey: []byte("p"), EncryptedPrivate: []byte("x")}), want: ErrInvalid},
		{name: "create tenant key of other tenant", cmd: createTenant(now, "acme", &raftpb.Key{Tenant: "other", Kid: "k", Alg: "A256GCM", Use: "seal", EncryptedPrivate: []byte("x")}), want: ErrInvalid},
		{name: "create tenant retired key", cmd: createTenant(now, "acme", &raftpb.Key{Kid: "k", Alg: "A256GCM", Use: "seal", EncryptedPrivate: []byte("x"), RetiredUnixNano: 1}), want: ErrInvalid},

		// CreateClient
		{
			name:  "create client",
			setup: []*raftpb.Command{createTenant(t0, "acme")},
			cmd:   createClient(now, testClient("acme", "c1")),
			check: func(t *testing.T, s *State) {
				c := client(t, s, "acme", "c1")
				if c.Revision != 1 || c.CreatedUnixNano != now || c.UpdatedUnixNano != now || c.Secrets[0].CreatedUnixNano != now {
					t.Fatalf("client = %v", c)
				}
				if got := s.Clients("acme"); len(got) != 1 || got[0] != c {
					t.Fatalf("clients = %v", got)
				}
			},
		},
		{name: "create client tenant missing", cmd: createClient(now, testClient("acme", "c1")), want: ErrNotFound},
		{name: "create client twice", setup: tenantWithClient(t0), cmd: createClient(now, testClient("acme", "c1")), want: ErrExists},
		{
			name:  "create client public with secret",
			setup: []*raftpb.Command{createTenant(t0, "acme")},
			cmd: createClient(now, func() *raftpb.Client {
				c := testClient("acme", "c1")
				c.Public = true
				return c
			}()),
			want: ErrInvalid,
		},
		{
			name:  "create client bad token format",
			setup: []*raftpb.Command{createTenant(t0, "acme")},
			cmd: createClient(now, func() *raftpb.Client {
				c := testClient("acme", "c1")
				c.TokenFormat = "paseto"
				return c
			}()),
			want: ErrInvalid,
		},
		{
			name:  "create client bad id",
			setup: []*raftpb.Command{createTenant(t0, "acme")},
			cmd:   createClient(now, testClient("acme", "c\n1")),
			want:  ErrInvalid,
		},
		{name: "create client nil", cmd: command(now, &raftpb.CreateClient{}), want: ErrInvalid},

		// UpdateClient
		{
			name:  "update client keeps secrets, identity, flags",
			setup: append(tenantWithClient(t0), disable("acme", "c1", true)),
			cmd:   update(changed, 0),
			check: func(t *testing.T, s *State) {
				c := client(t, s, "acme", "c1")
				if c.Name != "renamed" || !slices.Equal(c.Scopes, []string{"read"}) {
					t.Fatalf("settings not replaced: %v", c)
				}
				if !slices.Equal(secretHashes(c), []string{"hash-1-c1"}) || c.Public || !c.Disabled || c.CreatedUnixNano != t0 {
					t.Fatalf("kept fields changed: %v", c)
				}
				if c.Revision != 3 || c.UpdatedUnixNano != now {
					t.Fatalf("revision %d updated %d", c.Revision, c.UpdatedUnixNano)
				}
			},
		},
		{name: "update client expected revision", setup: tenantWithClient(t0), cmd: update(changed, 1)},
		{name: "update client conflict", setup: tenantWithClient(t0), cmd: update(changed, 2), want: ErrConflict},
		{name: "update client missing", setup: []*raftpb.Command{createTenant(t0, "acme")}, cmd: update(changed, 0), want: ErrNotFound},
		{name: "update client tenant missing", cmd: update(changed, 0), want: ErrNotFound},
		{name: "update client negative ttl", setup: tenantWithClient(t0), cmd: update(&raftpb.Client{Tenant: "acme", Id: "c1", AccessTokenTtlSeconds: -1}, 0), want: ErrInvalid},

		// RotateClientSecret
		{
			name:  "rotate with overlap",
			setup: tenantWithClient(t0),
			cmd:   rotate(now, "hash-2", now+hour),
			check: func(t *testing.T, s *State) {
				c := client(t, s, "acme", "c1")
				if !slices.Equal(secretHashes(c), []string{"hash-2", "hash-1-c1"}) {
					t.Fatalf("secrets = %v", secretHashes(c))
				}
				if c.Secrets[0].ExpiresUnixNano != 0 || c.Secrets[0].CreatedUnixNano != now || c.Secrets[1].ExpiresUnixNano != now+hour {
					t.Fatalf("secrets = %v", c.Secrets)
				}
				if c.Revision != 2 || c.UpdatedUnixNano != now {
					t.Fatalf("revision %d updated %d", c.Revision, c.UpdatedUnixNano)
				}
			},
		},
		{
			name:  "rotate without overlap drops the old secret",
			setup: tenantWithClient(t0),
			cmd:   rotate(now, "hash-2", 0),
			check: func(t *testing.T, s *State) {
				if got := secretHashes(client(t, s, "acme", "c1")); !slices.Equal(got, []string{"hash-2"}) {
					t.Fatalf("secrets = %v", got)
				}
			},
		},
		{
			name:  "rotate during overlap never extends an older secret",
			setup: append(tenantWithClient(t0), rotate(now-10*sec, "hash-2", now+60*sec)),
			cmd:   rotate(now, "hash-3", now+hour),
			check: func(t *testing.T, s *State) {
				c := client(t, s, "acme", "c1")
				if !slices.Equal(secretHashes(c), []string{"hash-3", "hash-2", "hash-1-c1"}) {
					t.Fatalf("secrets = %v", secretHashes(c))
				}
				if c.Secrets[1].ExpiresUnixNano != now+hour || c.Secrets[2].ExpiresUnixNano != now+60*sec {
					t.Fatalf("secrets = %v", c.Secrets)
				}
			},
		},
		{
			name:  "rotate after overlap drops expired secrets",
			setup: append(tenantWithClient(t0), rotate(now-hour, "hash-2", now-sec)),
			cmd:   rotate(now, "hash-3", now+hour),
			check: func(t *testing.T, s *State) {
				if got := secretHashes(client(t, s, "acme", "c1")); !slices.Equal(got, []string{"hash-3", "hash-2"}) {
					t.Fatalf("secrets = %v", got)
				}
			},
		},
		{name: "rotate missing client", setup: []*raftpb.Command{createTenant(t0, "acme")}, cmd: rotate(now, "h", 0), want: ErrNotFound},
		{name: "rotate tenant missing", cmd: rotate(now, "h", 0), want: ErrNotFound},
		{name: "rotate empty hash", setup: tenantWithClient(t0), cmd: rotate(now, "", 0), want: ErrInvalid},
		{
			name: "rotate public client",
			setup: []*raftpb.Command{createTenant(t0, "acme"), createClient(t0, func() *raftpb.Client {
				c := testClient("acme", "c1")
				c.Public, c.Secrets = true, nil
				return c
			}())},
			cmd:  rotate(now, "h", 0),
			want: ErrInvalid,
		},
		{
			name:  "rotate to an expired secret",
			setup: tenantWithClient(t0),
			cmd: command(now, &raftpb.RotateClientSecret{Tenant: "acme", ClientId: "c1",
				NewSecret: &raftpb.SecretHash{Hash: []byte("h"), ExpiresUnixNano: now}}),
			want: ErrInvalid,
		},

		// SetClientDisabled
		{
			name:  "disable client",
			setup: tenantWithClient(t0),
			cmd:   disable("acme", "c1", true),
			check: func(t *testing.T, s *State) {
				c := client(t, s, "acme", "c1")
				if !c.Disabled || c.Revision != 2 || c.UpdatedUnixNano != now {
					t.Fatalf("client = %v", c)
				}
			},
		},
		{
			name:  "enable client",
			setup: append(tenantWithClient(t0), disable("acme", "c1", true)),
			cmd:   disable("acme", "c1", false),
			check: func(t *testing.T, s *State) {
				if c := client(t, s, "acme", "c1"); c.Disabled || c.Revision != 3 {
					t.Fatalf("client = %v", c)
				}
			},
		},
		{name: "disable missing client", setup: []*raftpb.Command{createTenant(t0, "acme")}, cmd: disable("acme", "nope", true), want: ErrNotFound},
		{name: "disable bad tenant id", cmd: disable("", "c1", true), want: ErrInvalid},

		// AddKeys
		{
			name:  "add keys retires older keys of the same use",
			setup: []*raftpb.Command{createTenant(t0, "acme", sigKey("k1", t0, 30*sec), sealKey("s1", t0, hour))},
			cmd:   addKeys("acme", sigKey("k2", now+5*sec, hour)),
			check: func(t *testing.T, s *State) {
				keys := s.Keys("acme")
				if got := kids(keys); !slices.Equal(got, []string{"k1", "s1", "k2"}) {
					t.Fatalf("keys = %v", got)
				}
				k1, s1, k2 := keys[0], keys[1], keys[2]
				if k1.RetiredUnixNano != now+5*sec || k1.ExpiresUnixNano != now+35*sec {
					t.Fatalf("k1 = %v", k1)
				}
				if s1.RetiredUnixNano != 0 || k2.RetiredUnixNano != 0 || k2.CreatedUnixNano != now || k2.Tenant != "acme" {
					t.Fatalf("s1 = %v, k2 = %v", s1, k2)
				}
			},
		},
		{
			name:  "add keys keeps an already retired key's dates",
			setup: []*raftpb.Command{createTenant(t0, "acme", sigKey("k1", t0, 30*sec)), addKeys("acme", sigKey("k2", now, hour))},
			cmd:   addKeys("acme", sigKey("k3", now+hour, hour)),
			check: func(t *testing.T, s *State) {
				keys := s.Keys("acme")
				if keys[0].RetiredUnixNano != now || keys[1].RetiredUnixNano != now+hour || keys[1].ExpiresUnixNano != now+2*hour {
					t.Fatalf("keys = %v", keys)
				}
			},
		},
		{
			name: "add keys retires a pending key that a sooner key supersedes",
			setup: []*raftpb.Command{
				createTenant(t0, "acme", sigKey("k1", t0, 30*sec)),
				addKeys("acme", sigKey("k2", now+hour, hour)), // pending: retires k1 at now+hour
			},
			cmd: addKeys("acme", sigKey("k3", now, hour)), // immediate rotation
			check: func(t *testing.T, s *State) {
				keys := s.Keys("acme")
				k1, k2, k3 := keys[0], keys[1], keys[2]
				if k1.RetiredUnixNano != now || k1.ExpiresUnixNano != now+30*sec {
					t.Fatalf("k1 = %v, want retired at k3's not_before", k1)
				}
				if k2.RetiredUnixNano != now || k2.ExpiresUnixNano != now+hour {
					t.Fatalf("pending k2 = %v, want retired before it ever signs", k2)
				}
				if k3.RetiredUnixNano != 0 {
					t.Fatalf("k3 = %v", k3)
				}
			},
		},
		{name: "add existing kid", setup: []*raftpb.Command{createTenant(t0, "acme", sigKey("k1", t0, 0))}, cmd: addKeys("acme", sealKey("s9", now, 0), sigKey("k1", now, 0)), want: ErrExists},
		{name: "add keys tenant missing", cmd: addKeys("acme", sigKey("k1", now, 0)), want: ErrNotFound},
		{name: "add no keys", setup: []*raftpb.Command{createTenant(t0, "acme")}, cmd: addKeys("acme"), want: ErrInvalid},
		{name: "add signing key without public key", setup: []*raftpb.Command{createTenant(t0, "acme")}, cmd: addKeys("acme", &raftpb.Key{Kid: "k", Alg: "ES256", Use: "sig", EncryptedPrivate: []byte("x")}), want: ErrInvalid},

		// RevokeToken
		{
			name:  "revoke",
			setup: tenantWithClient(t0),
			cmd:   revoke(now, "acme", "jti-1", now+hour),
			check: func(t *testing.T, s *State) {
				r, ok := s.Revocation("acme", "jti-1")
				if !ok || !s.Revoked("acme", "jti-1") || r.RevokedUnixNano != now || r.ExpiresUnixNano != now+hour {
					t.Fatalf("revocation = %v, %v", r, ok)
				}
				if s.Revoked("acme", "jti-2") || s.Revoked("other", "jti-1") {
					t.Fatal("unrelated jti revoked")
				}
			},
		},
		{
			name:  "revoke twice keeps the first record",
			setup: append(tenantWithClient(t0), revoke(now-sec, "acme", "jti-1", now+hour)),
			cmd: command(now, &raftpb.RevokeToken{Revocation: &raftpb.Revocation{
				Tenant: "acme", Jti: "jti-1", ExpiresUnixNano: now + 2*hour, Reason: "second"}}),
			check: func(t *testing.T, s *State) {
				r, _ := s.Revocation("acme", "jti-1")
				if r.Reason != "test" || r.RevokedUnixNano != now-sec || r.ExpiresUnixNano != now+hour {
					t.Fatalf("revocation = %v", r)
				}
			},
		},
		{
			name:  "revoke an expired token is a no-op",
			setup: tenantWithClient(t0),
			cmd:   revoke(now, "acme", "jti-1", now),
			check: func(t *testing.T, s *State) {
				if s.Revoked("acme", "jti-1") || len(s.Revocations("acme")) != 0 {
					t.Fatal("expired token stored")
				}
			},
		},
		{name: "revoke tenant missing", cmd: revoke(now, "acme", "jti-1", now+hour), want: ErrNotFound},
		{name: "revoke without expiry", setup: tenantWithClient(t0), cmd: revoke(now, "acme", "jti-1", 0), want: ErrInvalid},
		{name: "revoke without jti", setup: tenantWithClient(t0), cmd: revoke(now, "acme", "", now+hour), want: ErrInvalid},
		{name: "revoke nil", cmd: command(now, &raftpb.RevokeToken{}), want: ErrInvalid},

		// Sweep
		{
			name: "sweep removes expired revocations and keys",
			setup: []*raftpb.Command{
				createTenant(t0, "acme", sigKey("k1", t0, 10*sec), sealKey("s1", t0, 0)),
				createTenant(t0, "beta"),
				command(t0+sec, &raftpb.AddKeys{Tenant: "acme", Keys: []*raftpb.Key{sigKey("k2", now-20*sec, hour)}}), // k1 expires now-10s
				revoke(t0, "acme", "old", now-sec),
				revoke(t0, "acme", "edge", now),
				revoke(t0, "acme", "new", now+sec),
				revoke(t0, "beta", "old", now-sec),
			},
			cmd: sweep(now),
			check: func(t *testing.T, s *State) {
				if got := kids(s.Keys("acme")); !slices.Equal(got, []string{"s1", "k2"}) {
					t.Fatalf("keys = %v", got)
				}
				var jtis []string
				for _, r := range s.Revocations("acme") {
					jtis = append(jtis, r.Jti)
				}
				if !slices.Equal(jtis, []string{"new"}) || len(s.Revocations("beta")) != 0 {
					t.Fatalf("revocations = %v, beta %v", jtis, s.Revocations("beta"))
				}
			},
		},
		{name: "sweep empty state", cmd: sweep(now)},

		// Command envelope
		{name: "no operation", cmd: command(now, nil), want: ErrInvalid},
		{name: "no time", cmd: createTenant(0, "acme"), want: ErrInvalid},
		{name: "request id too long", cmd: withRequestID(createTenant(now, "acme"), string(make([]byte, 300))), want: ErrInvalid},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := openTestFSM(t)
			mustApply(t, f, tc.setup...)
			before := domainDump(t, f)
			res := applyAll(t, f, tc.cmd)[0]
			if tc.want == nil && res.Err != nil {
				t.Fatalf("err = %v, want nil", res.Err)
			}
			if tc.want != nil && !errors.Is(res.Err, tc.want) {
				t.Fatalf("err = %v, want %v", res.Err, tc.want)
			}
			if res.Index != f.AppliedIndex() || res.Index != uint64(len(tc.setup)+1) {
				t.Fatalf("result index %d, applied %d", res.Index, f.AppliedIndex())
			}
			if tc.want != nil && domainDump(t, f) != before {
				t.Fatal("a failed command changed the state")
			}
			if tc.check != nil {
				tc.check(t, f.State())
			}
			checkViewMatchesDB(t, f)
		})
	}
}

func TestFSMRequestIDIdempotency(t *testing.T) {
	f := openTestFSM(t)
	first := applyAll(t, f, withRequestID(createTenant(t0, "acme"), "req-1"))[0]
	if first.Err != nil {
		t.Fatal(first.Err)
	}
	// The same request again: answered with the first result, not ErrExists.
	again := applyAll(t, f, withRequestID(createTenant(t0+sec, "acme"), "req-1"))[0]
	if again != first {
		t.Fatalf("repeat = %+v, want %+v", again, first)
	}
	// A failed request is remembered with its outcome.
	fail := applyAll(t, f, withRequestID(createClient(t0, testClient("nope", "c1")), "req-2"))[0]
	if !errors.Is(fail.Err, ErrNotFound) {
		t.Fatal(fail.Err)
	}
	mustApply(t, f, createTenant(t0, "nope"))
	again = applyAll(t, f, withRequestID(createClient(t0, testClient("nope", "c1")), "req-2"))[0]
	if again.Index != fail.Index || !errors.Is(again.Err, ErrNotFound) {
		t.Fatalf("repeat = %+v, want %+v", again, fail)
	}
	if _, ok := f.State().Client("nope", "c1"); ok {
		t.Fatal("repeated request was applied")
	}
	// A repeated rotation does not rotate twice.
	mustApply(t, f, withRequestID(createClient(t0, testClient("acme", "c1")), "req-3"))
	rot := withRequestID(command(t0+sec, &raftpb.RotateClientSecret{Tenant: "acme", ClientId: "c1",
		NewSecret: &raftpb.SecretHash{Hash: []byte("h2")}, PreviousExpiresUnixNano: t0 + hour}), "req-4")
	applyAll(t, f, rot, proto.Clone(rot).(*raftpb.Command))
	if c, _ := f.State().Client("acme", "c1"); c.Revision != 2 || len(c.Secrets) != 2 {
		t.Fatalf("client after repeated rotation = %v", c)
	}

	// Sweep forgets request ids after 24 hours of command time.
	mustApply(t, f, sweep(t0+24*hour-sec))
	if res := applyAll(t, f, withRequestID(createTenant(t0, "acme"), "req-1"))[0]; res.Index != first.Index {
		t.Fatalf("request forgotten too early: %+v", res)
	}
	mustApply(t, f, sweep(t0+24*hour+2*sec))
	if res := applyAll(t, f, withRequestID(createTenant(t0, "acme"), "req-1"))[0]; !errors.Is(res.Err, ErrExists) {
		t.Fatalf("after sweep: %+v, want a fresh ErrExists", res)
	}
	checkViewMatchesDB(t, f)
}

func TestFSMRevocationExpiresBySweepOnly(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, createTenant(t0, "acme"), revoke(t0, "acme", "j", t0+10*sec))
	if !f.State().Revoked("acme", "j") {
		t.Fatal("not revoked")
	}
	// Later commands do not expire it by themselves: only Sweep does.
	mustApply(t, f, createTenant(t0+20*sec, "other"))
	if !f.State().Revoked("acme", "j") {
		t.Fatal("revocation vanished without a sweep")
	}
	mustApply(t, f, sweep(t0+9*sec))
	if !f.State().Revoked("acme", "j") {
		t.Fatal("swept before expiry")
	}
	mustApply(t, f, sweep(t0+10*sec))
	if f.State().Revoked("acme", "j") {
		t.Fatal("not swept at expiry")
	}
	// Revoking again after the sweep is a fresh record.
	mustApply(t, f, revoke(t0+11*sec, "acme", "j", t0+hour))
	if r, ok := f.State().Revocation("acme", "j"); !ok || r.RevokedUnixNano != t0+11*sec {
		t.Fatalf("re-revocation = %v", r)
	}
	checkViewMatchesDB(t, f)
}

// TestFSMStopsAtEntriesItDoesNotUnderstand: an entry from a newer binary
// (or a corrupt one) is never skipped and never panics: the FSM commits the
// entries before it, reports it, applies nothing more, and answers the rest
// with ErrClosed once halted. The entry is applied after a restart with a
// binary that understands it.
func TestFSMStopsAtEntriesItDoesNotUnderstand(t *testing.T) {
	cases := []struct {
		name   string
		data   []byte
		reason string
	}{
		{"undecodable", []byte{0xff, 0xff, 0xff}, "undecodable command"},
		{"newer version", func() []byte {
			c := createTenant(t0, "acme")
			c.Version = CommandVersion + 1
			b, _ := proto.Marshal(c)
			return b
		}(), "command version 2 is newer"},
		{"version zero", func() []byte {
			c := createTenant(t0, "acme")
			c.Version = 0
			b, _ := proto.Marshal(c)
			return b
		}(), "command version 0"},
		{"unknown operation", func() []byte {
			b, _ := proto.Marshal(&raftpb.Command{Version: 1, TimeUnixNano: t0})
			// Field 99, varint 1: an operation from a newer build.
			return append(b, 0x98, 0x06, 0x01)
		}(), "unknown operation"},
		{"unknown field of a known operation", func() []byte {
			tenant, _ := proto.Marshal(&raftpb.Tenant{Id: "gamma"})
			tenant = append(tenant, 0xf8, 0x3f, 0x01) // field 1023, varint 1
			ct := protowire.AppendTag(nil, 1, protowire.BytesType)
			ct = protowire.AppendBytes(ct, tenant)
			b, _ := proto.Marshal(&raftpb.Command{Version: 1, TimeUnixNano: t0})
			b = protowire.AppendTag(b, 16, protowire.BytesType)
			return protowire.AppendBytes(b, ct)
		}(), "unknown field in command.create_tenant.tenant"},
		{"newer cluster version", func() []byte {
			b, _ := proto.Marshal(&raftpb.Command{Version: 1, TimeUnixNano: t0, Op: &raftpb.Command_SetClusterVersion{
				SetClusterVersion: &raftpb.SetClusterVersion{ClusterVersion: &raftpb.ClusterVersion{Version: ClusterVersion + 1}}}})
			return b
		}(), "the cluster's version is 3"},
		{"unknown feature", func() []byte {
			b, _ := proto.Marshal(&raftpb.Command{Version: 1, TimeUnixNano: t0, Op: &raftpb.Command_SetClusterVersion{
				SetClusterVersion: &raftpb.SetClusterVersion{ClusterVersion: &raftpb.ClusterVersion{Version: 2, Features: []string{"from_the_future"}}}}})
			return b
		}(), `feature "from_the_future"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := openTestFSM(t)
			mustApply(t, f, createTenant(t0, "acme"))
			before := dump(t, f)
			done := make(chan []any)
			go func() {
				done <- f.ApplyBatch([]*hraft.Log{
					logOf(t, 2, createTenant(t0, "beta"))[0],
					{Index: 3, Term: 1, Type: hraft.LogCommand, Data: tc.data},
					logOf(t, 4, createTenant(t0, "delta"))[0],
				})
			}()
			deadline := time.Now().Add(30 * time.Second)
			for f.NotUnderstood() == nil {
				if time.Now().After(deadline) {
					t.Fatal("the FSM did not report the entry")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if err := f.NotUnderstood(); !strings.Contains(err.Error(), tc.reason) || !strings.Contains(err.Error(), "log entry 3") {
				t.Fatalf("reported %v, want %q at entry 3", err, tc.reason)
			}
			f.Halt()
			resp := <-done
			if r, ok := resp[0].(Result); !ok || r.Err != nil {
				t.Fatalf("entry 2: %v", resp[0])
			}
			if resp[1] != ErrClosed || resp[2] != ErrClosed {
				t.Fatalf("entries 3, 4: %v %v, want ErrClosed", resp[1], resp[2])
			}
			// The entry before committed; nothing from it on did.
			if _, ok := f.State().Tenant("beta"); !ok || f.AppliedIndex() != 2 {
				t.Fatalf("beta applied: %v, applied index %d", ok, f.AppliedIndex())
			}
			if _, ok := f.State().Tenant("delta"); ok {
				t.Fatal("an entry after the stop was applied")
			}
			if dump(t, f) == before {
				t.Fatal("the entries before the stop were not committed")
			}
			checkViewMatchesDB(t, f)
		})
	}
}

func TestFSMSkipsReplayedEntriesAndConfigEntries(t *testing.T) {
	f := openTestFSM(t)
	logs := logOf(t, 1, createTenant(t0, "acme"), createClient(t0, testClient("acme", "c1")))
	logs = append(logs, &hraft.Log{Index: 3, Term: 2, Type: hraft.LogConfiguration, Data: []byte("cfg")})
	resp := f.ApplyBatch(logs)
	if resp[2] != nil || f.AppliedIndex() != 3 {
		t.Fatalf("config entry: resp %v, applied %d", resp[2], f.AppliedIndex())
	}
	before := dump(t, f)
	// A replay after restart: every entry is at or below the applied index.
	resp = f.ApplyBatch(logs)
	for i, r := range resp[:2] {
		if r.(Result).Err != nil || r.(Result).Index != uint64(i+1) {
			t.Fatalf("replayed entry %d: %v", i+1, r)
		}
	}
	if dump(t, f) != before {
		t.Fatal("replay changed the state")
	}
}

func TestFSMOnApplied(t *testing.T) {
	f := openTestFSM(t)
	type seen struct {
		index uint64
		op    string
		res   Result
	}
	var got []seen
	f.OnApplied(func(index uint64, cmd *raftpb.Command, res Result) {
		// Called after commit: the view already shows the write.
		if _, ok := f.State().Tenant("acme"); !ok && index == 1 {
			t.Error("observer ran before the view was updated")
		}
		got = append(got, seen{index, string(cmd.ProtoReflect().WhichOneof(cmd.ProtoReflect().Descriptor().Oneofs().ByName("op")).Name()), res})
	})
	f.ApplyBatch(logOf(t, 1,
		createTenant(t0, "acme"),
		createTenant(t0, "acme"),
		withRequestID(revoke(t0, "acme", "j", t0+hour), "r"),
		withRequestID(revoke(t0, "acme", "j", t0+hour), "r"),
	))
	if len(got) != 4 {
		t.Fatalf("observed %d entries", len(got))
	}
	want := []seen{
		{1, "create_tenant", Result{Index: 1}},
		{2, "create_tenant", Result{Index: 2}},
		{3, "revoke_token", Result{Index: 3}},
		{4, "revoke_token", Result{Index: 3}},
	}
	for i := range want {
		g := got[i]
		if g.index != want[i].index || g.op != want[i].op || g.res.Index != want[i].res.Index {
			t.Fatalf("entry %d: %+v, want %+v", i, g, want[i])
		}
	}
	if !errors.Is(got[1].res.Err, ErrExists) {
		t.Fatalf("entry 2: %v", got[1].res.Err)
	}
}

func TestFSMReopenKeepsState(t *testing.T) {
	path := t.TempDir() + "/state.db"
	f, err := OpenFSM(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	mustApply(t, f, tenantWithClient(t0)...)
	mustApply(t, f, revoke(t0, "acme", "j", t0+hour))
	want, wantView := dump(t, f), viewDump(f.State())
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	g := openTestFSMAt(t, path)
	if dump(t, g) != want || viewDump(g.State()) != wantView {
		t.Fatal("state changed across reopen")
	}
	if g.AppliedIndex() != 3 {
		t.Fatalf("applied %d", g.AppliedIndex())
	}
}

func TestOpenFSMRefusesOtherSchemaVersion(t *testing.T) {
	path := t.TempDir() + "/state.db"
	f, err := OpenFSM(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = f.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket([]byte(bucketMeta)).Put([]byte(metaSchemaVersion), u64(SchemaVersion+1))
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	if _, err := OpenFSM(path, nil); err == nil || !strings.Contains(err.Error(), "schema version") {
		t.Fatalf("err = %v", err)
	}
}

// TestStateConcurrentReaders reads the view while batches apply (run with
// -race) and checks that readers never see a torn client record.
func TestStateConcurrentReaders(t *testing.T) {
	f := openTestFSM(t)
	mustApply(t, f, tenantWithClient(t0)...)
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			s := f.State()
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				c, ok := s.Client("acme", "c1")
				if !ok || c.Revision == 0 || c.UpdatedUnixNano == 0 {
					errs <- fmt.Errorf("client = %v, %v", c, ok)
					return
				}
				_ = s.Revoked("acme", "jti-1")
				_ = s.Keys("acme")
				_ = s.Tenants()
				_ = s.Revocations("acme")
			}
		}()
	}
	var cmds []*raftpb.Command
	for i := range 200 {
		cmds = append(cmds,
			command(t0+int64(i), &raftpb.SetClientDisabled{Tenant: "acme", ClientId: "c1", Disabled: i%2 == 0}),
			revoke(t0+int64(i), "acme", fmt.Sprintf("jti-%d", i), t0+int64(i)+10*sec),
			sweep(t0+int64(i)*sec))
	}
	logs := logOf(t, f.AppliedIndex()+1, cmds...)
	for i := 0; i < len(logs); i += 16 {
		f.ApplyBatch(logs[i:min(i+16, len(logs))])
	}
	close(stop)
	for range 4 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	checkViewMatchesDB(t, f)
}
