package raft

import (
	"fmt"
	"strings"

	"go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"

	"github.com/tallyauth/tally/raft/raftpb"
)

// Buckets of the end-user flows are created on first use inside the
// applying transaction (CreateBucketIfNotExists is deterministic), so
// tenants created before these kinds existed need no migration.
func (a *applier) flowBucket(tenant, kind string) *bbolt.Bucket {
	name := tenantBucket(tenant, kind)
	if b := a.tx.Bucket(name); b != nil {
		return b
	}
	b, err := a.tx.CreateBucketIfNotExists(name)
	if err != nil {
		storageFault("create bucket %q: %v", name, err)
	}
	return b
}

// normalizeUsername is the key of the username index: usernames are unique
// per tenant regardless of case.
func normalizeUsername(s string) string { return strings.ToLower(s) }

func notFoundUser(tenant, id string) error {
	return fmt.Errorf("%w: user %q in tenant %q", ErrNotFound, id, tenant)
}

func (a *applier) getUser(tenant, id string) (*raftpb.User, error) {
	if !a.tenantExists(tenant) {
		return nil, notFoundTenant(tenant)
	}
	u := new(raftpb.User)
	if !a.get(a.flowBucket(tenant, kindUsers), id, u) {
		return nil, notFoundUser(tenant, id)
	}
	return u, nil
}

func (a *applier) putUser(u *raftpb.User) {
	a.putRecord(a.flowBucket(u.Tenant, kindUsers), kindUsers, u.Tenant, u.Id, u)
}

func (a *applier) createUser(c *raftpb.CreateUser, now int64) error {
	in := c.GetUser()
	if !a.tenantExists(in.GetTenant()) {
		return notFoundTenant(in.GetTenant())
	}
	users := a.flowBucket(in.GetTenant(), kindUsers)
	names := a.flowBucket(in.GetTenant(), kindUsernames)
	if users.Get([]byte(in.GetId())) != nil {
		return fmt.Errorf("%w: user %q in tenant %q", ErrExists, in.GetId(), in.GetTenant())
	}
	if a.tombstoned(in.GetTenant(), kindDeletedUsers, in.GetId()) {
		return errTombstoned("user", in.GetTenant(), in.GetId())
	}
	uname := normalizeUsername(in.GetUsername())
	if names.Get([]byte(uname)) != nil {
		return fmt.Errorf("%w: username %q in tenant %q", ErrExists, in.GetUsername(), in.GetTenant())
	}
	u := proto.Clone(in).(*raftpb.User)
	u.Revision = 1
	u.CreatedUnixNano = now
	u.UpdatedUnixNano = now
	a.put(names, []byte(uname), []byte(u.Id))
	a.putUser(u)
	return nil
}

func (a *applier) setUserPassword(s *raftpb.SetUserPassword, now int64) error {
	u, err := a.getUser(s.GetTenant(), s.GetUserId())
	if err != nil {
		return err
	}
	u.Password = proto.Clone(s.GetPassword()).(*raftpb.PasswordHash)
	u.Revision++
	u.UpdatedUnixNano = now
	a.putUser(u)
	return nil
}

func (a *applier) setUserStatus(s *raftpb.SetUserStatus, now int64) error {
	u, err := a.getUser(s.GetTenant(), s.GetUserId())
	if err != nil {
		return err
	}
	wasActive := !u.Disabled && !u.Locked
	u.Disabled = s.GetDisabled()
	u.Locked = s.GetLocked()
	active := !u.Disabled && !u.Locked
	switch {
	case wasActive && !active:
		// A user locked out (disabled or locked): resource servers and
		// SIEMs learn it from the event log, and the user's refresh
		// families end here, in the same command, with the access tokens
		// they issued.
		a.emit(&raftpb.Event{Tenant: u.Tenant, Kind: raftpb.EventKind_EVENT_KIND_USER_LOCKED, TimeUnixNano: now, Subject: u.Id})
		a.revokeUserFamilies(u.Tenant, u.Id, ReasonUserLocked, now)
		u.LockedUnixNano = now
	case !wasActive && active:
		// The reverse event: resource servers that reject the user's
		// tokens on the lock accept fresh ones again, but not those issued
		// before the lock (a stolen token does not come back).
		a.emit(&raftpb.Event{Tenant: u.Tenant, Kind: raftpb.EventKind_EVENT_KIND_USER_UNLOCKED, TimeUnixNano: now, Subject: u.Id,
			LockedUnixNano: u.LockedUnixNano})
	}
	u.Revision++
	u.UpdatedUnixNano = now
	a.putUser(u)
	return nil
}

// consentKey is user id, NUL, client id.
func consentKey(userID, clientID string) string { return userID + "\x00" + clientID }

func (a *applier) rememberConsent(r *raftpb.RememberConsent, now int64) error {
	in := r.GetConsent()
	if _, err := a.getUser(in.GetTenant(), in.GetUserId()); err != nil {
		return err
	}
	if _, err := a.getClient(in.GetTenant(), in.GetClientId()); err != nil {
		return err
	}
	c := proto.Clone(in).(*raftpb.Consent)
	c.CreatedUnixNano = now
	key := consentKey(c.UserId, c.ClientId)
	a.putRecord(a.flowBucket(c.Tenant, kindConsents), kindConsents, c.Tenant, key, c)
	return nil
}

// ----- validation -----

const (
	maxUsernameLen = 255
	maxSaltLen     = 64
	maxPwHashLen   = 128
	maxUserCodeLen = 16
)

func checkUserID(id string) error {
	if !validID(id) {
		return invalidf("user id %q: want 1 to %d printable ASCII characters", id, maxIDLen)
	}
	return nil
}

func checkPasswordHash(p *raftpb.PasswordHash) error {
	if p == nil {
		return nil // a user without a password cannot log in
	}
	switch {
	case p.GetAlg() != "argon2id":
		return invalidf("password hash alg %q: want argon2id", p.GetAlg())
	case len(p.GetSalt()) < 8 || len(p.GetSalt()) > maxSaltLen:
		return invalidf("password salt: want 8 to %d bytes", maxSaltLen)
	case len(p.GetHash()) < 16 || len(p.GetHash()) > maxPwHashLen:
		return invalidf("password hash: want 16 to %d bytes", maxPwHashLen)
	case p.GetTime() == 0 || p.GetTime() > 64:
		return invalidf("argon2id time: want 1 to 64")
	case p.GetMemoryKib() < 8 || p.GetMemoryKib() > 4<<20:
		return invalidf("argon2id memory: want 8 KiB to 4 GiB")
	case p.GetThreads() == 0 || p.GetThreads() > 255:
		return invalidf("argon2id threads: want 1 to 255")
	}
	return nil
}

func checkUser(u *raftpb.User) error {
	if u == nil {
		return invalidf("no user")
	}
	if err := checkTenantID(u.GetTenant()); err != nil {
		return err
	}
	if err := checkUserID(u.GetId()); err != nil {
		return err
	}
	n := u.GetUsername()
	if n == "" || len(n) > maxUsernameLen || strings.ContainsAny(n, " \t\r\n\x00") {
		return invalidf("username: want 1 to %d characters without spaces", maxUsernameLen)
	}
	if err := checkText("email", u.GetEmail()); err != nil {
		return err
	}
	if err := checkText("name", u.GetName()); err != nil {
		return err
	}
	return checkPasswordHash(u.GetPassword())
}

func checkTenantUser(tenant, user string) error {
	if err := checkTenantID(tenant); err != nil {
		return err
	}
	return checkUserID(user)
}

func checkConsent(c *raftpb.Consent) error {
	if c == nil {
		return invalidf("no consent")
	}
	if err := checkTenantUser(c.GetTenant(), c.GetUserId()); err != nil {
		return err
	}
	if err := checkClientID(c.GetClientId()); err != nil {
		return err
	}
	if c.GetExpiresUnixNano() < 0 {
		return invalidf("consent expiry is negative")
	}
	return checkList("scopes", c.GetScopes())
}
