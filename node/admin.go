package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tallyauth/tally/issuance"
	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
	"github.com/tallyauth/tally/raft"
	"github.com/tallyauth/tally/raft/raftpb"
)

// adminService implements the admin Connect API on top of the replica. Every
// mutation is one Raft command whose ids, timestamps, hashed secrets and
// sealed keys are computed here, by the proposer.
type adminService struct {
	rep  *replica
	iss  *issuance.Server
	kek  *issuance.KEK
	cfg  Config
	now  func() time.Time
	base string
	// pwParams overrides the argon2id parameters of new password hashes
	// (tests); nil: issuance.DefaultPasswordParams (admin_users.go).
	pwParams *issuance.PasswordParams
	// supports reports whether every member applies a feature's
	// operations (admin_delete.go); nil: assume so.
	supports func(ctx context.Context, feature string) bool
	// par gates the issue 11 operations (par.go).
	par *featureGate
	// threatOK reports whether every member applies the issue-13
	// operations (admincred.go); nil: assume so.
	threatOK func(context.Context) bool
}

var _ adminv1connect.AdminServiceHandler = (*adminService)(nil)

// Defaults and bounds of client settings.
const (
	DefaultAccessTokenTTL = issuance.DefaultAccessTokenTTL
	MinAccessTokenTTL     = issuance.MinAccessTokenTTL
	maxNameLen            = 200
	maxListLen            = 100
)

var tenantIDPattern = regexp.MustCompile(`^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$`)

// supportedGrants are the grant types a client may be registered with.
var supportedGrants = []string{
	issuance.GrantClientCredentials,
	issuance.GrantAuthorizationCode,
	issuance.GrantRefreshToken,
	issuance.GrantDeviceCode,
	issuance.GrantTokenExchange,
}

func invalid(format string, a ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, a...))
}

// connectError maps node, raft and issuance errors to Connect codes: the one
// table for the admin edge.
func connectError(err error) error {
	var ce *connect.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ce):
		return err
	case errors.Is(err, raft.ErrNotFound), errors.Is(err, issuance.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, raft.ErrExists):
		return connect.NewError(connect.CodeAlreadyExists, err)
	case errors.Is(err, raft.ErrConflict):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, raft.ErrInvalid):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, ErrUnavailable):
		return connect.NewError(connect.CodeUnavailable, err)
	default:
		return connect.NewError(connect.CodeInternal, err)
	}
}

func (a *adminService) propose(ctx context.Context, cmd *raftpb.Command) error {
	ctx, cancel := context.WithTimeout(ctx, a.cfg.WriteTimeout)
	defer cancel()
	_, err := a.rep.propose(ctx, cmd)
	return connectError(err)
}

// ----- tenants -----

func (a *adminService) CreateTenant(ctx context.Context, req *connect.Request[adminv1.CreateTenantRequest]) (*connect.Response[adminv1.CreateTenantResponse], error) {
	m := req.Msg
	if !tenantIDPattern.MatchString(m.Id) {
		return nil, invalid("tenant id %q: want 1-63 lower-case letters, digits or '-', not starting or ending with '-'", m.Id)
	}
	if len(m.DisplayName) > maxNameLen {
		return nil, invalid("display name longer than %d characters", maxNameLen)
	}
	alg := m.SigningAlg
	if alg == "" {
		alg = a.cfg.DefaultSigningAlg
	}
	if !validSigningAlg(alg) {
		return nil, invalid("signing algorithm %q: want ES256, EdDSA or RS256", alg)
	}
	now := a.now()
	keys, err := a.newKeys(m.Id, alg, now, now)
	if err != nil {
		return nil, connectError(err)
	}
	t := &raftpb.Tenant{Id: m.Id, DisplayName: m.DisplayName, CreatedUnixNano: now.UnixNano(), SigningAlg: alg}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_CreateTenant{CreateTenant: &raftpb.CreateTenant{Tenant: t, Keys: keys}}}); err != nil {
		return nil, err
	}
	return tenantResponse(a, m.Id, func(t *adminv1.Tenant) *adminv1.CreateTenantResponse {
		return &adminv1.CreateTenantResponse{Tenant: t}
	})
}

func (a *adminService) GetTenant(_ context.Context, req *connect.Request[adminv1.GetTenantRequest]) (*connect.Response[adminv1.GetTenantResponse], error) {
	return tenantResponse(a, req.Msg.Id, func(t *adminv1.Tenant) *adminv1.GetTenantResponse {
		return &adminv1.GetTenantResponse{Tenant: t}
	})
}

func tenantResponse[R any](a *adminService, id string, wrap func(*adminv1.Tenant) *R) (*connect.Response[R], error) {
	t, ok := a.rep.rn.State().Tenant(id)
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", id))
	}
	return connect.NewResponse(wrap(a.tenantPB(t))), nil
}

func (a *adminService) ListTenants(context.Context, *connect.Request[adminv1.ListTenantsRequest]) (*connect.Response[adminv1.ListTenantsResponse], error) {
	var out []*adminv1.Tenant
	for _, t := range a.rep.rn.State().Tenants() {
		out = append(out, a.tenantPB(t))
	}
	return connect.NewResponse(&adminv1.ListTenantsResponse{Tenants: out}), nil
}

func (a *adminService) tenantPB(t *raftpb.Tenant) *adminv1.Tenant {
	return &adminv1.Tenant{
		Id:                                 t.Id,
		DisplayName:                        t.DisplayName,
		Issuer:                             a.iss.Issuer(t.Id),
		CreatedAt:                          ts(t.CreatedUnixNano),
		Disabled:                           t.Disabled,
		SigningAlg:                         raft.SigningAlgOf(t),
		RequirePushedAuthorizationRequests: t.RequirePushedAuthorizationRequests,
	}
}

// ----- clients -----

func (a *adminService) CreateClient(ctx context.Context, req *connect.Request[adminv1.CreateClientRequest]) (*connect.Response[adminv1.CreateClientResponse], error) {
	m := req.Msg
	if _, ok := a.rep.rn.State().Tenant(m.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", m.Tenant))
	}
	grants := m.GrantTypes
	if len(grants) == 0 {
		grants = []string{issuance.GrantClientCredentials}
	}
	c := &raftpb.Client{
		Tenant:                             m.Tenant,
		Name:                               m.Name,
		GrantTypes:                         dedupe(normalizeGrants(grants)),
		Scopes:                             dedupe(m.Scopes),
		Audiences:                          dedupe(m.Audiences),
		AccessTokenTtlSeconds:              m.AccessTokenTtlSeconds,
		TokenFormat:                        m.TokenFormat,
		Public:                             m.Public,
		RedirectUris:                       dedupe(m.RedirectUris),
		DpopBound:                          m.DpopBound,
		RequirePushedAuthorizationRequests: m.RequirePushedAuthorizationRequests,
	}
	if (c.DpopBound || c.RequirePushedAuthorizationRequests) && a.supports != nil && !a.supports(ctx, featurePARKeyPolicy) {
		// An older member would ignore the field (raft/ops.go fieldGates).
		return nil, connect.NewError(connect.CodeFailedPrecondition,
			errors.New("dpop_bound and require_pushed_authorization_requests need every cluster member to support feature par_keypolicy; upgrade the other nodes first"))
	}
	var err error
	if c.Auth, err = clientAuthFromAdmin(m.Auth, m.Public); err != nil { // ztauth.go
		return nil, err
	}
	if c.AccessTokenTtlSeconds == 0 {
		c.AccessTokenTtlSeconds = int64(DefaultAccessTokenTTL / time.Second)
	}
	if c.TokenFormat == "" {
		c.TokenFormat = string(issuance.FormatJWT)
	}
	if err := validateClient(c); err != nil {
		return nil, err
	}
	id, err := issuance.NewClientID(rand.Reader)
	if err != nil {
		return nil, connectError(err)
	}
	c.Id = id
	var secret string
	now := a.now()
	if !c.Public && needsSecret(c.Auth) {
		if secret, err = issuance.NewClientSecret(rand.Reader); err != nil {
			return nil, connectError(err)
		}
		c.Secrets = []*raftpb.SecretHash{{Hash: a.kek.HashSecret(secret), CreatedUnixNano: now.UnixNano()}}
	}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_CreateClient{CreateClient: &raftpb.CreateClient{Client: c}}}); err != nil {
		return nil, err
	}
	out, err := a.clientPB(m.Tenant, id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.CreateClientResponse{Client: out, ClientSecret: secret}), nil
}

func (a *adminService) GetClient(_ context.Context, req *connect.Request[adminv1.GetClientRequest]) (*connect.Response[adminv1.GetClientResponse], error) {
	c, err := a.clientPB(req.Msg.Tenant, req.Msg.ClientId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.GetClientResponse{Client: c}), nil
}

func (a *adminService) ListClients(_ context.Context, req *connect.Request[adminv1.ListClientsRequest]) (*connect.Response[adminv1.ListClientsResponse], error) {
	st := a.rep.rn.State()
	if _, ok := st.Tenant(req.Msg.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", req.Msg.Tenant))
	}
	now := a.now()
	var out []*adminv1.Client
	for _, c := range st.Clients(req.Msg.Tenant) {
		out = append(out, clientToAdmin(c, now))
	}
	return connect.NewResponse(&adminv1.ListClientsResponse{Clients: out}), nil
}

func (a *adminService) UpdateClient(ctx context.Context, req *connect.Request[adminv1.UpdateClientRequest]) (*connect.Response[adminv1.UpdateClientResponse], error) {
	m := req.Msg
	cur, ok := a.rep.rn.State().Client(m.Tenant, m.ClientId)
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("client %q not found in tenant %q", m.ClientId, m.Tenant))
	}
	c := &raftpb.Client{
		Tenant:                             cur.Tenant,
		Id:                                 cur.Id,
		Name:                               cur.Name,
		GrantTypes:                         raft.GrantTypesOf(cur),
		Scopes:                             cur.Scopes,
		Audiences:                          cur.Audiences,
		AccessTokenTtlSeconds:              cur.AccessTokenTtlSeconds,
		TokenFormat:                        raft.TokenFormatName(raft.TokenFormatOf(cur)),
		Disabled:                           cur.Disabled,
		Public:                             cur.Public,
		RedirectUris:                       cur.RedirectUris,
		DpopBound:                          cur.DpopBound,
		RequirePushedAuthorizationRequests: cur.RequirePushedAuthorizationRequests,
	}
	if m.Name != nil {
		c.Name = *m.Name
	}
	if m.GrantTypes != nil {
		c.GrantTypes = dedupe(normalizeGrants(m.GrantTypes.Values))
	}
	if m.Scopes != nil {
		c.Scopes = dedupe(m.Scopes.Values)
	}
	if m.Audiences != nil {
		c.Audiences = dedupe(m.Audiences.Values)
	}
	if m.AccessTokenTtlSeconds != nil {
		c.AccessTokenTtlSeconds = *m.AccessTokenTtlSeconds
	}
	if m.TokenFormat != nil {
		c.TokenFormat = *m.TokenFormat
	}
	if m.RedirectUris != nil {
		c.RedirectUris = dedupe(m.RedirectUris.Values)
	}
	if err := validateClient(c); err != nil {
		return nil, err
	}
	cmd := &raftpb.UpdateClient{Client: c, ExpectedRevision: m.ExpectedRevision}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_UpdateClient{UpdateClient: cmd}}); err != nil {
		return nil, err
	}
	out, err := a.clientPB(m.Tenant, m.ClientId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.UpdateClientResponse{Client: out}), nil
}

func (a *adminService) DisableClient(ctx context.Context, req *connect.Request[adminv1.DisableClientRequest]) (*connect.Response[adminv1.DisableClientResponse], error) {
	c, err := a.setDisabled(ctx, req.Msg.Tenant, req.Msg.ClientId, true)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.DisableClientResponse{Client: c}), nil
}

func (a *adminService) EnableClient(ctx context.Context, req *connect.Request[adminv1.EnableClientRequest]) (*connect.Response[adminv1.EnableClientResponse], error) {
	c, err := a.setDisabled(ctx, req.Msg.Tenant, req.Msg.ClientId, false)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.EnableClientResponse{Client: c}), nil
}

func (a *adminService) setDisabled(ctx context.Context, tenant, id string, disabled bool) (*adminv1.Client, error) {
	cmd := &raftpb.SetClientDisabled{Tenant: tenant, ClientId: id, Disabled: disabled}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_SetClientDisabled{SetClientDisabled: cmd}}); err != nil {
		return nil, err
	}
	return a.clientPB(tenant, id)
}

// maxSecretOverlap bounds how long a rotated-out secret keeps working.
const maxSecretOverlap = 30 * 24 * time.Hour

func (a *adminService) RotateClientSecret(ctx context.Context, req *connect.Request[adminv1.RotateClientSecretRequest]) (*connect.Response[adminv1.RotateClientSecretResponse], error) {
	m := req.Msg
	overlap := time.Duration(m.OverlapSeconds) * time.Second
	if overlap < 0 || overlap > maxSecretOverlap {
		return nil, invalid("overlap must be between 0 and %s", maxSecretOverlap)
	}
	c, ok := a.rep.rn.State().Client(m.Tenant, m.ClientId)
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("client %q not found in tenant %q", m.ClientId, m.Tenant))
	}
	if c.Public {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("a public client has no secret"))
	}
	secret, err := issuance.NewClientSecret(rand.Reader)
	if err != nil {
		return nil, connectError(err)
	}
	now := a.now()
	var prevExpires int64
	if overlap > 0 {
		prevExpires = now.Add(overlap).UnixNano()
	}
	cmd := &raftpb.RotateClientSecret{
		Tenant:                  m.Tenant,
		ClientId:                m.ClientId,
		NewSecret:               &raftpb.SecretHash{Hash: a.kek.HashSecret(secret), CreatedUnixNano: now.UnixNano()},
		PreviousExpiresUnixNano: prevExpires,
	}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_RotateClientSecret{RotateClientSecret: cmd}}); err != nil {
		return nil, err
	}
	out, err := a.clientPB(m.Tenant, m.ClientId)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&adminv1.RotateClientSecretResponse{Client: out, ClientSecret: secret}), nil
}

func (a *adminService) clientPB(tenant, id string) (*adminv1.Client, error) {
	c, ok := a.rep.rn.State().Client(tenant, id)
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("client %q not found in tenant %q", id, tenant))
	}
	return clientToAdmin(c, a.now()), nil
}

func clientToAdmin(c *raftpb.Client, now time.Time) *adminv1.Client {
	out := &adminv1.Client{
		Tenant:                             c.Tenant,
		ClientId:                           c.Id,
		Name:                               c.Name,
		GrantTypes:                         raft.GrantTypesOf(c),
		Scopes:                             c.Scopes,
		Audiences:                          c.Audiences,
		AccessTokenTtlSeconds:              c.AccessTokenTtlSeconds,
		TokenFormat:                        raft.TokenFormatName(raft.TokenFormatOf(c)),
		Disabled:                           c.Disabled,
		CreatedAt:                          ts(c.CreatedUnixNano),
		UpdatedAt:                          ts(c.UpdatedUnixNano),
		Revision:                           c.Revision,
		Public:                             c.Public,
		RedirectUris:                       c.RedirectUris,
		DpopBound:                          c.DpopBound,
		RequirePushedAuthorizationRequests: c.RequirePushedAuthorizationRequests,
		Auth:                               clientAuthToAdmin(c.Auth), // ztauth.go
	}
	for i, s := range c.Secrets {
		if s.ExpiresUnixNano != 0 && s.ExpiresUnixNano <= now.UnixNano() {
			continue
		}
		out.ActiveSecrets++
		if i > 0 && s.ExpiresUnixNano != 0 {
			out.PreviousSecretExpiresAt = ts(s.ExpiresUnixNano)
		}
	}
	return out
}

func validateClient(c *raftpb.Client) error {
	if strings.TrimSpace(c.Name) == "" || len(c.Name) > maxNameLen {
		return invalid("name is required, at most %d characters", maxNameLen)
	}
	if len(c.GrantTypes) == 0 {
		return invalid("at least one grant type is required")
	}
	for _, g := range c.GrantTypes {
		if !slices.Contains(supportedGrants, g) {
			return invalid("grant type %q is not supported (supported: %s)", g, strings.Join(supportedGrants, ", "))
		}
	}
	if c.Public && slices.Contains(c.GrantTypes, issuance.GrantClientCredentials) {
		return invalid("a public client cannot use client_credentials")
	}
	if slices.Contains(c.GrantTypes, issuance.GrantAuthorizationCode) && len(c.RedirectUris) == 0 {
		return invalid("the authorization_code grant needs at least one redirect URI (--redirect-uri)")
	}
	if len(c.Scopes) > maxListLen || len(c.Audiences) > maxListLen || len(c.RedirectUris) > maxListLen {
		return invalid("at most %d scopes, audiences and redirect URIs", maxListLen)
	}
	for _, s := range c.Scopes {
		if !issuance.ValidScopeToken(s) {
			return invalid("scope %q is not a valid scope token (RFC 6749 section 3.3)", s)
		}
	}
	for _, au := range c.Audiences {
		if u, err := url.Parse(au); err != nil || !u.IsAbs() || u.Fragment != "" {
			return invalid("audience %q must be an absolute URI without a fragment (RFC 8707)", au)
		}
	}
	for _, ru := range c.RedirectUris {
		if u, err := url.Parse(ru); err != nil || !u.IsAbs() || u.Fragment != "" {
			return invalid("redirect URI %q must be an absolute URI without a fragment", ru)
		}
	}
	ttl := time.Duration(c.AccessTokenTtlSeconds) * time.Second
	if ttl < MinAccessTokenTTL || ttl > MaxAccessTokenTTL {
		return invalid("access-token lifetime must be between %s and %s", MinAccessTokenTTL, MaxAccessTokenTTL)
	}
	switch issuance.TokenFormat(c.TokenFormat) {
	case issuance.FormatJWT, issuance.FormatOpaque:
	default:
		return invalid("token format %q: want jwt or opaque", c.TokenFormat)
	}
	return nil
}

func dedupe(in []string) []string {
	var out []string
	for _, s := range in {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// ----- keys -----

func validSigningAlg(alg string) bool {
	return alg == "ES256" || alg == "EdDSA" || alg == "RS256"
}

// newKeys generates a signing and a sealing key for a tenant, sealed under
// the KEK, used from notBefore on.
func (a *adminService) newKeys(tenant, alg string, created, notBefore time.Time) ([]*raftpb.Key, error) {
	sig, err := issuance.GenerateKey(a.kek, rand.Reader, tenant, alg, issuance.UseSign, created, notBefore)
	if err != nil {
		return nil, err
	}
	seal, err := issuance.GenerateKey(a.kek, rand.Reader, tenant, "A256GCM", issuance.UseSeal, created, notBefore)
	if err != nil {
		return nil, err
	}
	return []*raftpb.Key{keyToPB(sig, created, a.cfg.KeyRetention), keyToPB(seal, created, sealRetention(a.cfg.KeyRetention))}, nil // sealkeys.go
}

func (a *adminService) ListKeys(_ context.Context, req *connect.Request[adminv1.ListKeysRequest]) (*connect.Response[adminv1.ListKeysResponse], error) {
	st := a.rep.rn.State()
	if _, ok := st.Tenant(req.Msg.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", req.Msg.Tenant))
	}
	now := a.now()
	var out []*adminv1.Key
	for _, k := range st.Keys(req.Msg.Tenant) {
		out = append(out, keyToAdmin(k, now))
	}
	return connect.NewResponse(&adminv1.ListKeysResponse{Keys: out}), nil
}

func (a *adminService) RotateKeys(ctx context.Context, req *connect.Request[adminv1.RotateKeysRequest]) (*connect.Response[adminv1.RotateKeysResponse], error) {
	m := req.Msg
	t, ok := a.rep.rn.State().Tenant(m.Tenant)
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", m.Tenant))
	}
	alg := m.SigningAlg
	if alg == "" {
		alg = raft.SigningAlgOf(t)
	}
	if !validSigningAlg(alg) {
		return nil, invalid("signing algorithm %q: want ES256, EdDSA or RS256", alg)
	}
	delay := a.cfg.KeyPublishDelay
	if m.PublishDelaySeconds != nil {
		delay = time.Duration(*m.PublishDelaySeconds) * time.Second
	}
	if delay < 0 || delay > 7*24*time.Hour {
		return nil, invalid("publish delay must be between 0 and 168h")
	}
	now := a.now()
	keys, err := a.newKeys(m.Tenant, alg, now, now.Add(delay))
	if err != nil {
		return nil, connectError(err)
	}
	if err := a.propose(ctx, &raftpb.Command{Op: &raftpb.Command_AddKeys{AddKeys: &raftpb.AddKeys{Tenant: m.Tenant, Keys: keys}}}); err != nil {
		return nil, err
	}
	var out []*adminv1.Key
	for _, k := range keys {
		out = append(out, keyToAdmin(k, now))
	}
	return connect.NewResponse(&adminv1.RotateKeysResponse{Keys: out}), nil
}

func keyToAdmin(k *raftpb.Key, now time.Time) *adminv1.Key {
	state := "active"
	switch {
	case k.RetiredUnixNano != 0 && k.RetiredUnixNano <= now.UnixNano():
		state = "retired"
	case k.NotBeforeUnixNano > now.UnixNano():
		state = "pending"
	}
	return &adminv1.Key{
		Kid:       k.Kid,
		Alg:       raft.KeyAlgOf(k),
		Use:       raft.KeyUseName(raft.KeyUseOf(k)),
		State:     state,
		CreatedAt: ts(k.CreatedUnixNano),
		NotBefore: ts(k.NotBeforeUnixNano),
		RetiredAt: ts(k.RetiredUnixNano),
		ExpiresAt: ts(k.ExpiresUnixNano),
	}
}

// ----- revocations -----

func (a *adminService) RevokeToken(ctx context.Context, req *connect.Request[adminv1.RevokeTokenRequest]) (*connect.Response[adminv1.RevokeTokenResponse], error) {
	m := req.Msg
	if _, ok := a.rep.rn.State().Tenant(m.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", m.Tenant))
	}
	rv := issuance.Revocation{Tenant: m.Tenant, Reason: m.Reason}
	switch {
	case m.Token != "" && m.Jti != "":
		return nil, invalid("give either a token or a jti, not both")
	case m.Token != "":
		info, err := a.iss.Inspect(ctx, m.Tenant, m.Token)
		if err != nil {
			return nil, invalid("not a token of tenant %q", m.Tenant)
		}
		rv.JTI, rv.ClientID, rv.Subject, rv.ExpiresAt = info.JTI, info.ClientID, info.Subject, info.ExpiresAt
	case m.Jti != "":
		if m.ExpiresAt == nil || !m.ExpiresAt.IsValid() {
			return nil, invalid("revoking by jti needs the token's expires_at, so that the entry can expire with it")
		}
		if len(m.Jti) > 256 {
			return nil, invalid("jti longer than 256 characters")
		}
		rv.JTI, rv.ExpiresAt = m.Jti, m.ExpiresAt.AsTime()
	default:
		return nil, invalid("a token or a jti is required")
	}
	if len(rv.Reason) > maxNameLen {
		return nil, invalid("reason longer than %d characters", maxNameLen)
	}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.WriteTimeout)
	defer cancel()
	if err := a.rep.Revoke(ctx, rv); err != nil {
		return nil, connectError(err)
	}
	out := &adminv1.Revocation{
		Tenant: rv.Tenant, Jti: rv.JTI, ClientId: rv.ClientID, Subject: rv.Subject,
		ExpiresAt: timestamppb.New(rv.ExpiresAt), Reason: rv.Reason,
	}
	if r, ok := a.rep.rn.State().Revocation(rv.Tenant, rv.JTI); ok {
		out = revocationToAdmin(r)
	}
	return connect.NewResponse(&adminv1.RevokeTokenResponse{Revocation: out}), nil
}

func (a *adminService) ListRevocations(_ context.Context, req *connect.Request[adminv1.ListRevocationsRequest]) (*connect.Response[adminv1.ListRevocationsResponse], error) {
	st := a.rep.rn.State()
	if _, ok := st.Tenant(req.Msg.Tenant); !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("tenant %q not found", req.Msg.Tenant))
	}
	var out []*adminv1.Revocation
	for _, r := range st.Revocations(req.Msg.Tenant) {
		out = append(out, revocationToAdmin(r))
	}
	return connect.NewResponse(&adminv1.ListRevocationsResponse{Revocations: out}), nil
}

func revocationToAdmin(r *raftpb.Revocation) *adminv1.Revocation {
	return &adminv1.Revocation{
		Tenant:    r.Tenant,
		Jti:       r.Jti,
		ClientId:  r.ClientId,
		Subject:   r.Subject,
		RevokedAt: ts(r.RevokedUnixNano),
		ExpiresAt: ts(r.ExpiresUnixNano),
		Reason:    r.Reason,
	}
}

func ts(unixNano int64) *timestamppb.Timestamp {
	if unixNano == 0 {
		return nil
	}
	return timestamppb.New(time.Unix(0, unixNano))
}
