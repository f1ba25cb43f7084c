package raft

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// flowCmd wraps an end-user operation in a command at now.
func flowCmd(now int64, op any) *raftpb.Command {
	c := &raftpb.Command{Version: CommandVersion, TimeUnixNano: now}
	switch o := op.(type) {
	case *raftpb.CreateUser:
		c.Op = &raftpb.Command_CreateUser{CreateUser: o}
	case *raftpb.SetUserPassword:
		c.Op = &raftpb.Command_SetUserPassword{SetUserPassword: o}
	case *raftpb.SetUserStatus:
		c.Op = &raftpb.Command_SetUserStatus{SetUserStatus: o}
	case *raftpb.RememberConsent:
		c.Op = &raftpb.Command_RememberConsent{RememberConsent: o}
	case *raftpb.RedeemCode:
		c.Op = &raftpb.Command_RedeemCode{RedeemCode: o}
	case *raftpb.RotateRefresh:
		c.Op = &raftpb.Command_RotateRefresh{RotateRefresh: o}
	case *raftpb.RevokeFamily:
		c.Op = &raftpb.Command_RevokeFamily{RevokeFamily: o}
	case *raftpb.CreateDeviceCode:
		c.Op = &raftpb.Command_CreateDeviceCode{CreateDeviceCode: o}
	case *raftpb.DecideDeviceCode:
		c.Op = &raftpb.Command_DecideDeviceCode{DecideDeviceCode: o}
	case *raftpb.PollDeviceCode:
		c.Op = &raftpb.Command_PollDeviceCode{PollDeviceCode: o}
	default:
		return command(now, op)
	}
	return c
}

func h(s string) []byte { return bytes.Repeat([]byte(s), 32)[:32] }

func testUser(tenant, id, username string) *raftpb.User {
	return &raftpb.User{Tenant: tenant, Id: id, Username: username, Email: username + "@example.com",
		Password: &raftpb.PasswordHash{Alg: "argon2id", Salt: h("s")[:16], Hash: h("p"), Time: 1, MemoryKib: 64, Threads: 1}}
}

// flowFSM is an FSM with tenant t, client c1 (authorization code, refresh,
// device) and user u1 (alice).
func flowFSM(t *testing.T) *FSM {
	t.Helper()
	f := openTestFSM(t)
	c := testClient("t", "c1")
	c.GrantTypes = []string{"authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"}
	mustApply(t, f, createTenant(t0, "t"), createClient(t0, c), createClient(t0, testClient("t", "c2")),
		flowCmd(t0, &raftpb.CreateUser{User: testUser("t", "u1", "Alice")}))
	return f
}

func family(id string, hash []byte) *raftpb.Family {
	return &raftpb.Family{Tenant: "t", Id: id, ClientId: "c1", UserId: "u1", Scopes: []string{"openid", "offline_access"},
		ExpiresUnixNano: t0 + 30*24*hour, IdleTimeoutNanos: 24 * hour, Generation: 1, CurrentHash: hash}
}

func at(jti string, exp int64) *raftpb.AccessToken {
	return &raftpb.AccessToken{Jti: jti, ExpiresUnixNano: exp}
}

func grantOf(t *testing.T, r Result) *raftpb.GrantResult {
	t.Helper()
	if r.Err != nil {
		t.Fatalf("result error: %v", r.Err)
	}
	if r.Grant == nil {
		t.Fatal("no grant result")
	}
	return r.Grant
}

func apply1(t *testing.T, f *FSM, c *raftpb.Command) Result {
	t.Helper()
	return applyAll(t, f, c)[0]
}

func TestUsers(t *testing.T) {
	f := flowFSM(t)
	st := f.State()
	u, ok := st.UserByUsername("t", "alice")
	if !ok || u.Id != "u1" || u.Revision != 1 || u.CreatedUnixNano != t0 {
		t.Fatalf("UserByUsername = %v, %v", u, ok)
	}
	for _, tc := range []struct {
		name string
		cmd  *raftpb.Command
		want error
	}{
		{"same id", flowCmd(t0, &raftpb.CreateUser{User: testUser("t", "u1", "other")}), ErrExists},
		{"same username any case", flowCmd(t0, &raftpb.CreateUser{User: testUser("t", "u2", "ALICE")}), ErrExists},
		{"unknown tenant", flowCmd(t0, &raftpb.CreateUser{User: testUser("nope", "u2", "bob")}), ErrNotFound},
		{"username with space", flowCmd(t0, &raftpb.CreateUser{User: testUser("t", "u2", "b ob")}), ErrInvalid},
		{"weak hash params", flowCmd(t0, &raftpb.CreateUser{User: &raftpb.User{Tenant: "t", Id: "u2", Username: "bob",
			Password: &raftpb.PasswordHash{Alg: "argon2id", Salt: h("s"), Hash: h("p"), Time: 0, MemoryKib: 64, Threads: 1}}}), ErrInvalid},
		{"bcrypt", flowCmd(t0, &raftpb.CreateUser{User: &raftpb.User{Tenant: "t", Id: "u2", Username: "bob",
			Password: &raftpb.PasswordHash{Alg: "bcrypt", Salt: h("s"), Hash: h("p"), Time: 1, MemoryKib: 64, Threads: 1}}}), ErrInvalid},
		{"status of unknown user", flowCmd(t0, &raftpb.SetUserStatus{Tenant: "t", UserId: "zz", Disabled: true}), ErrNotFound},
		{"consent of unknown client", flowCmd(t0, &raftpb.RememberConsent{Consent: &raftpb.Consent{Tenant: "t", UserId: "u1", ClientId: "zz", Scopes: []string{"openid"}}}), ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if r := apply1(t, f, tc.cmd); !errors.Is(r.Err, tc.want) {
				t.Fatalf("err = %v, want %v", r.Err, tc.want)
			}
		})
	}
	mustApply(t, f,
		flowCmd(t0+sec, &raftpb.SetUserStatus{Tenant: "t", UserId: "u1", Disabled: true}),
		flowCmd(t0+sec, &raftpb.SetUserPassword{Tenant: "t", UserId: "u1", Password: &raftpb.PasswordHash{Alg: "argon2id", Salt: h("t")[:16], Hash: h("q"), Time: 2, MemoryKib: 128, Threads: 1}}),
		flowCmd(t0+sec, &raftpb.RememberConsent{Consent: &raftpb.Consent{Tenant: "t", UserId: "u1", ClientId: "c1", Scopes: []string{"openid"}, ExpiresUnixNano: t0 + hour}}),
	)
	u, _ = st.User("t", "u1")
	if !u.Disabled || u.Revision != 3 || u.Password.Time != 2 {
		t.Errorf("after updates: %v", u)
	}
	if c, ok := st.Consent("t", "u1", "c1"); !ok || c.Scopes[0] != "openid" {
		t.Errorf("consent = %v, %v", c, ok)
	}
	// The view survives a reopen and a sweep removes expired consents.
	mustApply(t, f, sweep(t0+2*hour))
	if _, ok := st.Consent("t", "u1", "c1"); ok {
		t.Error("expired consent not swept")
	}
	path := f.path
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	g := openTestFSMAt(t, path)
	if u, ok := g.State().UserByUsername("t", "ALICE"); !ok || !u.Disabled {
		t.Errorf("after reopen: %v %v", u, ok)
	}
}

func TestRedeemCode(t *testing.T) {
	f := flowFSM(t)
	redeem := func(now int64, code string, fam *raftpb.Family, jti string) *raftpb.Command {
		return flowCmd(now, &raftpb.RedeemCode{Tenant: "t", CodeHash: h(code), CodeExpiresUnixNano: t0 + 60*sec,
			ClientId: "c1", UserId: "u1", Family: fam, AccessToken: at(jti, t0+hour)})
	}
	g := grantOf(t, apply1(t, f, redeem(t0+sec, "a", family("f1", h("r1")), "jti-1")))
	if g.Outcome != OutcomeDone || g.Family.GetId() != "f1" || g.Family.GetGeneration() != 1 {
		t.Fatalf("first redemption: %v", g)
	}
	// Rotate once so the family has a second access token.
	g = grantOf(t, apply1(t, f, flowCmd(t0+2*sec, &raftpb.RotateRefresh{Tenant: "t", FamilyId: "f1", Generation: 1,
		TokenHash: h("r1"), ClientId: "c1", NewHash: h("r2"), AccessToken: at("jti-2", t0+hour)})))
	if g.Outcome != OutcomeDone || g.Family.Generation != 2 {
		t.Fatalf("rotation: %v", g)
	}
	// A replayed code revokes the family and both access tokens.
	g = grantOf(t, apply1(t, f, redeem(t0+3*sec, "a", family("f2", h("x")), "jti-3")))
	if g.Outcome != OutcomeCodeReused {
		t.Fatalf("replay outcome = %q", g.Outcome)
	}
	for _, jti := range []string{"jti-1", "jti-2"} {
		if r, ok := f.State().Revocation("t", jti); !ok || r.Reason != ReasonCodeReuse {
			t.Errorf("%s not revoked: %v", jti, r)
		}
	}
	if f.State().Revoked("t", "jti-3") {
		t.Error("the replay's own token was recorded")
	}
	if len(g.Events) == 0 || g.Events[0].Kind != EventCodeReused {
		t.Errorf("events = %v", g.Events)
	}
	g = grantOf(t, apply1(t, f, flowCmd(t0+4*sec, &raftpb.RotateRefresh{Tenant: "t", FamilyId: "f1", Generation: 2,
		TokenHash: h("r2"), ClientId: "c1", NewHash: h("r3")})))
	if g.Outcome != OutcomeFamilyRevoked {
		t.Errorf("rotation after code replay: %q", g.Outcome)
	}

	// A code without offline_access: its access token is on the used-code record.
	grantOf(t, apply1(t, f, redeem(t0+sec, "b", nil, "jti-b")))
	grantOf(t, apply1(t, f, redeem(t0+2*sec, "b", nil, "jti-b2")))
	if !f.State().Revoked("t", "jti-b") {
		t.Error("access token of a replayed code without family not revoked")
	}
	if g := grantOf(t, apply1(t, f, redeem(t0+61*sec, "c", nil, "jti-c"))); g.Outcome != OutcomeExpiredToken {
		t.Errorf("expired code: %q", g.Outcome)
	}
	mustApply(t, f, flowCmd(t0, &raftpb.SetUserStatus{Tenant: "t", UserId: "u1", Disabled: true}))
	if g := grantOf(t, apply1(t, f, redeem(t0+sec, "d", nil, "jti-d"))); g.Outcome != OutcomeInvalid {
		t.Errorf("disabled user: %q", g.Outcome)
	}
	// Sweep forgets used codes after they expire.
	// Sweep forgets used codes once they expire: a later replay is just
	// an expired code.
	mustApply(t, f, sweep(t0+61*sec))
	if strings.Contains(dump(t, f), fmt.Sprintf("%x=", h("b"))) {
		t.Error("used code not swept")
	}
}

func rotate(now int64, gen uint64, presented, next string, jti string, interval int64) *raftpb.Command {
	return flowCmd(now, &raftpb.RotateRefresh{Tenant: "t", FamilyId: "f1", Generation: gen, TokenHash: h(presented),
		ClientId: "c1", NewHash: h(next), SealedSuccessor: []byte("sealed-" + next), ReuseIntervalNanos: interval,
		AccessToken: at(jti, now+hour), Node: "n1", Region: "eu"})
}

func TestRotateRefresh(t *testing.T) {
	newF := func(t *testing.T) *FSM {
		f := flowFSM(t)
		grantOf(t, apply1(t, f, flowCmd(t0, &raftpb.RedeemCode{Tenant: "t", CodeHash: h("a"), CodeExpiresUnixNano: t0 + 60*sec,
			ClientId: "c1", UserId: "u1", Family: family("f1", h("1")), AccessToken: at("j1", t0+hour)})))
		return f
	}
	t.Run("rotation chain", func(t *testing.T) {
		f := newF(t)
		for i, tok := range []string{"1", "2", "3"} {
			g := grantOf(t, apply1(t, f, rotate(t0+int64(i+1)*sec, uint64(i+1), tok, string(rune('2'+i)), "j", 0)))
			if g.Outcome != OutcomeDone || g.Family.Generation != uint64(i+2) {
				t.Fatalf("rotation %d: %v", i, g)
			}
		}
	})
	t.Run("reuse revokes the family", func(t *testing.T) {
		f := newF(t)
		grantOf(t, apply1(t, f, rotate(t0+sec, 1, "1", "2", "j2", 0)))
		g := grantOf(t, apply1(t, f, rotate(t0+2*sec, 1, "1", "x", "j3", 0)))
		if g.Outcome != OutcomeReuseDetected {
			t.Fatalf("outcome %q", g.Outcome)
		}
		if len(g.Events) != 2 || g.Events[0].Kind != EventReuseDetected || g.Events[0].Node != "n1" || g.Events[0].Region != "eu" ||
			g.Events[1].Kind != EventFamilyRevoked || g.Events[0].UserId != "u1" || g.Events[0].ClientId != "c1" {
			t.Errorf("events = %v", g.Events)
		}
		for _, j := range []string{"j1", "j2"} {
			if !f.State().Revoked("t", j) {
				t.Errorf("%s not revoked", j)
			}
		}
		// The outbox carries the reuse, the family revocation and the
		// revocations of both access tokens.
		evs, err := f.EventsSince(0, 0)
		if err != nil {
			t.Fatal(err)
		}
		kinds := map[raftpb.EventKind]int{}
		for _, ev := range evs {
			kinds[ev.Kind]++
			if ev.Kind == raftpb.EventKind_EVENT_KIND_REUSE_DETECTED && (ev.FamilyId != "f1" || ev.Subject != "u1" || ev.ClientId != "c1" ||
				ev.Node != "n1" || ev.Region != "eu") {
				t.Errorf("reuse event %v", ev)
			}
		}
		if kinds[raftpb.EventKind_EVENT_KIND_REUSE_DETECTED] != 1 || kinds[raftpb.EventKind_EVENT_KIND_FAMILY_REVOKED] != 1 ||
			kinds[raftpb.EventKind_EVENT_KIND_TOKEN_REVOKED] != 2 {
			t.Errorf("outbox events %v", kinds)
		}
		// The current token of the family is dead too.
		if g := grantOf(t, apply1(t, f, rotate(t0+3*sec, 2, "2", "3", "j4", 0))); g.Outcome != OutcomeFamilyRevoked {
			t.Errorf("current token after reuse: %q", g.Outcome)
		}
	})
	t.Run("reuse interval returns the same successor", func(t *testing.T) {
		f := newF(t)
		grantOf(t, apply1(t, f, rotate(t0+sec, 1, "1", "2", "j2", 5*sec)))
		g := grantOf(t, apply1(t, f, rotate(t0+3*sec, 1, "1", "other", "j3", 5*sec)))
		if g.Outcome != OutcomeReuseInterval || string(g.SealedSuccessor) != "sealed-2" || g.Family.Generation != 2 {
			t.Fatalf("within interval: %v", g)
		}
		// Outside the interval the same replay is reuse.
		g = grantOf(t, apply1(t, f, rotate(t0+7*sec, 1, "1", "other", "j4", 5*sec)))
		if g.Outcome != OutcomeReuseDetected {
			t.Fatalf("outside interval: %q", g.Outcome)
		}
	})
	t.Run("reuse interval needs the same client", func(t *testing.T) {
		f := newF(t)
		grantOf(t, apply1(t, f, rotate(t0+sec, 1, "1", "2", "j2", 5*sec)))
		c := rotate(t0+2*sec, 1, "1", "x", "j3", 5*sec)
		c.GetRotateRefresh().ClientId = "c2"
		if g := grantOf(t, apply1(t, f, c)); g.Outcome != OutcomeInvalid {
			t.Fatalf("other client: %q", g.Outcome)
		}
	})
	for _, tc := range []struct {
		name string
		prep []*raftpb.Command
		cmd  *raftpb.Command
		want string
	}{
		{"wrong hash for current generation", nil, rotate(t0+sec, 1, "z", "2", "j", 0), OutcomeInvalid},
		{"future generation", nil, rotate(t0+sec, 5, "1", "2", "j", 0), OutcomeInvalid},
		{"idle timeout", nil, rotate(t0+25*hour, 1, "1", "2", "j", 0), OutcomeFamilyExpired},
		{"absolute lifetime", []*raftpb.Command{rotate(t0+20*hour, 1, "1", "2", "j", 0), rotate(t0+40*hour, 2, "2", "3", "j", 0)},
			rotate(t0+31*24*hour, 3, "3", "4", "j", 0), OutcomeFamilyExpired},
		// Disabling the user ends the family in the same command.
		{"disabled user", []*raftpb.Command{flowCmd(t0, &raftpb.SetUserStatus{Tenant: "t", UserId: "u1", Disabled: true})},
			rotate(t0+sec, 1, "1", "2", "j", 0), OutcomeFamilyRevoked},
		{"disabled client", []*raftpb.Command{command(t0, &raftpb.SetClientDisabled{Tenant: "t", ClientId: "c1", Disabled: true})},
			rotate(t0+sec, 1, "1", "2", "j", 0), OutcomeInvalid},
		{"revoked family", []*raftpb.Command{flowCmd(t0, &raftpb.RevokeFamily{Tenant: "t", FamilyId: "f1", Reason: "admin"})},
			rotate(t0+sec, 1, "1", "2", "j", 0), OutcomeFamilyRevoked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newF(t)
			for _, c := range tc.prep {
				if r := apply1(t, f, c); r.Err != nil {
					t.Fatal(r.Err)
				}
			}
			if g := grantOf(t, apply1(t, f, tc.cmd)); g.Outcome != tc.want {
				t.Fatalf("outcome %q, want %q", g.Outcome, tc.want)
			}
		})
	}
	t.Run("retried request gets the first grant result", func(t *testing.T) {
		f := newF(t)
		c := withRequestID(rotate(t0+sec, 1, "1", "2", "j2", 0), "rid-1")
		first := grantOf(t, apply1(t, f, c))
		again := grantOf(t, apply1(t, f, withRequestID(rotate(t0+sec, 1, "1", "2", "j2", 0), "rid-1")))
		if first.Outcome != OutcomeDone || again.Outcome != OutcomeDone || again.Family.Generation != 2 {
			t.Fatalf("first %v, again %v", first, again)
		}
		if g := f.RememberedGrant("rid-1"); g == nil || g.Family.GetGeneration() != 2 {
			t.Fatalf("RememberedGrant = %v", g)
		}
	})
}

func TestDeviceCodes(t *testing.T) {
	f := flowFSM(t)
	create := func(now int64, code, user string) *raftpb.Command {
		return flowCmd(now, &raftpb.CreateDeviceCode{DeviceCode: &raftpb.DeviceCode{Tenant: "t", DeviceCodeHash: h(code),
			UserCode: user, ClientId: "c1", Scopes: []string{"openid", "offline_access"}, ExpiresUnixNano: t0 + 600*sec, IntervalNanos: 5 * sec}})
	}
	poll := func(now int64, code string) *raftpb.GrantResult {
		return grantOf(t, apply1(t, f, flowCmd(now, &raftpb.PollDeviceCode{Tenant: "t", DeviceCodeHash: h(code), ClientId: "c1",
			Family:      &raftpb.Family{Tenant: "t", Id: "fd-" + code, ClientId: "c1", Generation: 1, CurrentHash: h("r"), ExpiresUnixNano: t0 + 24*hour},
			AccessToken: at("jd", t0+hour)})))
	}
	mustApply(t, f, create(t0, "d1", "BCDFGHJK"))
	if r := apply1(t, f, create(t0, "d2", "BCDFGHJK")); !errors.Is(r.Err, ErrExists) {
		t.Fatalf("user code collision: %v", r.Err)
	}
	if d, ok := f.State().DeviceCodeByUserCode("t", "BCDFGHJK"); !ok || d.Status != DevicePending {
		t.Fatalf("view: %v %v", d, ok)
	}
	steps := []struct {
		now  int64
		want string
	}{
		{t0 + sec, OutcomeAuthorizationPending},
		{t0 + 3*sec, OutcomeSlowDown},                      // 2 s after the last poll, interval 5 s
		{t0 + 6*sec + sec/2, OutcomeSlowDown},              // 3.5 s: sooner than 5 s less 1 s of jitter
		{t0 + 10*sec + sec/2, OutcomeAuthorizationPending}, // 4 s: on time within the jitter
		{t0 + 15*sec + sec/2, OutcomeAuthorizationPending}, // the interval did not grow: never starved
	}
	for i, s := range steps {
		if g := poll(s.now, "d1"); g.Outcome != s.want {
			t.Fatalf("poll %d: %q, want %q", i, g.Outcome, s.want)
		}
	}
	if g := grantOf(t, apply1(t, f, flowCmd(t0+26*sec, &raftpb.DecideDeviceCode{Tenant: "t", UserCode: "XXXXXXXX", Approve: true, UserId: "u1"}))); g.Outcome != OutcomeNotFound {
		t.Fatalf("unknown user code: %q", g.Outcome)
	}
	mustApply(t, f, flowCmd(t0+26*sec, &raftpb.DecideDeviceCode{Tenant: "t", UserCode: "BCDFGHJK", Approve: true, UserId: "u1", AuthTimeUnixNano: t0}))
	g := poll(t0+45*sec, "d1")
	if g.Outcome != OutcomeDone || g.DeviceCode.UserId != "u1" || g.Family.GetUserId() != "u1" || g.Family.GetId() != "fd-d1" {
		t.Fatalf("approved poll: %v", g)
	}
	if g := poll(t0+70*sec, "d1"); g.Outcome != OutcomeInvalid {
		t.Fatalf("second redemption: %q", g.Outcome)
	}
	// Denied and expired codes.
	mustApply(t, f, create(t0, "d3", "LMNPQRST"),
		flowCmd(t0+sec, &raftpb.DecideDeviceCode{Tenant: "t", UserCode: "LMNPQRST", Approve: false}))
	if g := poll(t0+2*sec, "d3"); g.Outcome != OutcomeAccessDenied {
		t.Fatalf("denied: %q", g.Outcome)
	}
	mustApply(t, f, create(t0, "d4", "VWXZBCDF"))
	if g := poll(t0+601*sec, "d4"); g.Outcome != OutcomeExpiredToken {
		t.Fatalf("expired: %q", g.Outcome)
	}
	c := flowCmd(t0+sec, &raftpb.PollDeviceCode{Tenant: "t", DeviceCodeHash: h("d4"), ClientId: "c2"})
	if g := grantOf(t, apply1(t, f, c)); g.Outcome != OutcomeInvalid {
		t.Fatalf("other client: %q", g.Outcome)
	}
	mustApply(t, f, sweep(t0+601*sec))
	if _, ok := f.State().DeviceCodeByUserCode("t", "VWXZBCDF"); ok {
		t.Error("expired device code not swept from the view")
	}
}

// flowWorkload is a random mix of end-user commands over a few users,
// families and device codes, with successes, reuse, revocations and sweeps.
func flowWorkload(seed uint64, n int) []*raftpb.Command {
	r := rand.New(rand.NewPCG(seed, 1))
	c := testClient("t", "c1")
	c.GrantTypes = []string{"authorization_code", "refresh_token"}
	cmds := []*raftpb.Command{createTenant(t0, "t"), createClient(t0, c)}
	now := t0
	for i := range 3 {
		cmds = append(cmds, flowCmd(now, &raftpb.CreateUser{User: testUser("t", fmt.Sprintf("u%d", i), fmt.Sprintf("user%d", i))}))
	}
	gens := map[string]uint64{}
	for i := range n {
		now += int64(r.IntN(2000)+1) * int64(time.Millisecond)
		u := fmt.Sprintf("u%d", r.IntN(3))
		f := fmt.Sprintf("f%d", r.IntN(6))
		var cmd *raftpb.Command
		switch r.IntN(9) {
		case 0:
			cmd = flowCmd(now, &raftpb.RedeemCode{Tenant: "t", CodeHash: h(fmt.Sprintf("code%d", r.IntN(8))), CodeExpiresUnixNano: now + 60*sec,
				ClientId: "c1", UserId: u, Family: &raftpb.Family{Tenant: "t", Id: f, ClientId: "c1", UserId: u, Generation: 1,
					CurrentHash: h(f + "/1"), ExpiresUnixNano: now + hour, IdleTimeoutNanos: 20 * sec},
				AccessToken: at(fmt.Sprintf("j%d", i), now+hour)})
			gens[f] = 1
		case 1, 2, 3:
			g := gens[f]
			if g > 1 && r.IntN(4) == 0 {
				g-- // reuse
			}
			if g == 0 {
				g = 1
			}
			cmd = flowCmd(now, &raftpb.RotateRefresh{Tenant: "t", FamilyId: f, Generation: g, TokenHash: h(fmt.Sprintf("%s/%d", f, g)),
				ClientId: "c1", NewHash: h(fmt.Sprintf("%s/%d", f, g+1)), ReuseIntervalNanos: int64(r.IntN(2)) * 2 * sec,
				SealedSuccessor: []byte("s"), AccessToken: at(fmt.Sprintf("j%d", i), now+hour)})
			if g == gens[f] {
				gens[f] = g + 1
			}
		case 4:
			cmd = flowCmd(now, &raftpb.SetUserStatus{Tenant: "t", UserId: u, Disabled: r.IntN(3) == 0})
		case 5:
			cmd = flowCmd(now, &raftpb.RememberConsent{Consent: &raftpb.Consent{Tenant: "t", UserId: u, ClientId: "c1",
				Scopes: []string{"openid"}, ExpiresUnixNano: now + int64(r.IntN(100))*sec}})
		case 6:
			uc := fmt.Sprintf("BCDFGHJ%c", "KLMN"[r.IntN(4)])
			cmd = flowCmd(now, &raftpb.CreateDeviceCode{DeviceCode: &raftpb.DeviceCode{Tenant: "t", DeviceCodeHash: h(uc), UserCode: uc,
				ClientId: "c1", Scopes: []string{"openid"}, ExpiresUnixNano: now + 30*sec, IntervalNanos: 5 * sec}})
		case 7:
			uc := fmt.Sprintf("BCDFGHJ%c", "KLMN"[r.IntN(4)])
			if r.IntN(2) == 0 {
				cmd = flowCmd(now, &raftpb.DecideDeviceCode{Tenant: "t", UserCode: uc, Approve: r.IntN(2) == 0, UserId: u})
			} else {
				// Two polls in a row: the second is too early.
				cmds = append(cmds, flowCmd(now, &raftpb.PollDeviceCode{Tenant: "t", DeviceCodeHash: h(uc), ClientId: "c1"}))
				cmd = flowCmd(now+sec, &raftpb.PollDeviceCode{Tenant: "t", DeviceCodeHash: h(uc), ClientId: "c1"})
			}
		default:
			cmd = sweep(now)
		}
		cmds = append(cmds, cmd)
	}
	return cmds
}

// flowViewDump renders the end-user part of the read view.
func flowViewDump(s *State) string {
	var b strings.Builder
	for _, u := range s.Users("t") {
		fmt.Fprintf(&b, "user %s %s %v %d\n", u.Id, u.Username, u.Disabled, u.Revision)
		for _, c := range []string{"c1"} {
			if cs, ok := s.Consent("t", u.Id, c); ok {
				fmt.Fprintf(&b, "consent %s %s %v %d\n", u.Id, c, cs.Scopes, cs.ExpiresUnixNano)
			}
		}
	}
	for _, k := range "KLMN" {
		if d, ok := s.DeviceCodeByUserCode("t", fmt.Sprintf("BCDFGHJ%c", k)); ok {
			fmt.Fprintf(&b, "device %s %s %s %d %d\n", d.UserCode, d.Status, d.UserId, d.IntervalNanos, d.LastPollUnixNano)
		}
	}
	return b.String()
}

// TestFlowDeterminismAndSnapshot: replicas fed the same end-user log in
// different batchings hold the same buckets, keys and values (dump: the
// contents, not the database files) with identical outcomes; the view
// rebuilt from the database (reopen, snapshot restore) equals the one kept
// up to date by applies.
func TestFlowDeterminismAndSnapshot(t *testing.T) {
	cmds := flowWorkload(11, 600)
	logs := logOf(t, 1, cmds...)
	ref := openTestFSM(t)
	refRes := applyInBatches(ref, logs, rand.New(rand.NewPCG(0, 0)), 1)
	outcomes := map[string]int{}
	for _, r := range refRes {
		if r.Grant != nil {
			outcomes[r.Grant.Outcome]++
		}
	}
	for _, o := range []string{OutcomeDone, OutcomeReuseDetected, OutcomeFamilyRevoked, OutcomeCodeReused, OutcomeSlowDown} {
		if outcomes[o] == 0 {
			t.Errorf("workload never produced %q: %v", o, outcomes)
		}
	}
	other := openTestFSM(t)
	res := applyInBatches(other, logs, rand.New(rand.NewPCG(3, 0)), 50)
	if dump(t, other) != dump(t, ref) {
		t.Fatal("batched replica differs")
	}
	for i := range res {
		if !proto.Equal(res[i].Grant, refRes[i].Grant) || codeOf(res[i].Err) != codeOf(refRes[i].Err) {
			t.Fatalf("entry %d: %v / %v", i+1, res[i], refRes[i])
		}
	}
	want := flowViewDump(ref.State())
	if want == "" || flowViewDump(other.State()) != want {
		t.Fatal("views differ")
	}
	snap, err := ref.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	dst := openTestFSM(t)
	if err := dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err != nil {
		t.Fatal(err)
	}
	if dump(t, dst) != dump(t, ref) || flowViewDump(dst.State()) != want {
		t.Fatal("restored replica differs")
	}
}
