package main

import (
	"context"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

// secretWarning follows a client secret in text output.
const secretWarning = "warning: the client secret is shown only once and cannot be retrieved again; store it now"

// tokenFormats are the access token formats a client may use.
func tokenFormats() []string { return []string{"jwt", "opaque"} }

func clientCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "client create",
			synopsis: "[--tenant T] --name N [--grant G]... [--scope S]... [--audience A]... [--ttl 10m] [--format jwt|opaque] [--public] [--redirect-uri U]... [--auth-method M]... [--jwks-file F | --jwks-uri U] [--tls-subject-dn DN | --tls-san-dns NAME]",
			summary:  "Register an OAuth client and print its client_id and client_secret.",
			detail: "The secret is shown once; only a keyed hash is stored. --scope may be repeated\n" +
				"or hold a space-separated list. --ttl is the access token lifetime, a duration\n" +
				"(10m) or a number of seconds (600); the server allows 1m to 1h, unset means 10m.\n" +
				"A --public client (RFC 6749 section 2.1) gets no secret.",
			examples: []string{
				`tally admin client create --tenant acme --name orders-svc --scope "read:orders write:orders" --audience https://orders.example`,
				`tally admin client create --name worker --scope jobs --ttl 5m --format opaque --output json | jq -r .client_secret`,
				`tally admin client create --name spa --public --grant authorization_code --grant refresh_token --scope "openid profile" --redirect-uri https://app.example/cb`,
			},
			setup: clientCreate,
		},
		{
			path:     "client get",
			takesArg: true,
			synopsis: "[--tenant T] CLIENT_ID",
			summary:  "Show a client.",
			examples: []string{`tally admin client get --tenant acme 3f9c2a7e`, `tally admin client get 3f9c2a7e --output json`},
			setup:    clientGet,
		},
		{
			path:     "client list",
			synopsis: "[--tenant T]",
			summary:  "List the clients of a tenant.",
			examples: []string{`tally admin client list --tenant acme`, `tally admin client list --output json | jq -r '.[].client_id'`},
			setup:    clientList,
		},
		{
			path:     "client update",
			takesArg: true,
			synopsis: "[--tenant T] CLIENT_ID [--name N] [--grant G]... [--scope S]... [--audience A]... [--ttl D] [--format F] [--redirect-uri U]... [--expected-revision N]",
			summary:  "Change a client; only the flags given are changed.",
			detail: "A list flag replaces the whole list: --scope \"a b\" leaves exactly a and b;\n" +
				"an empty value (--audience '') clears the list. With --expected-revision the\n" +
				"update fails (failed_precondition) unless the client is at that revision.",
			examples: []string{
				`tally admin client update --tenant acme 3f9c2a7e --scope "read:orders write:orders refund:orders"`,
				`tally admin client update 3f9c2a7e --ttl 15m --format opaque --expected-revision 4`,
			},
			setup: clientUpdate,
		},
		{
			path:     "client disable",
			takesArg: true,
			synopsis: "[--tenant T] CLIENT_ID",
			summary:  "Disable a client; it gets no new tokens until enabled again.",
			examples: []string{`tally admin client disable --tenant acme 3f9c2a7e`},
			setup:    clientDisable,
		},
		{
			path:     "client enable",
			takesArg: true,
			synopsis: "[--tenant T] CLIENT_ID",
			summary:  "Enable a disabled client again.",
			examples: []string{`tally admin client enable --tenant acme 3f9c2a7e`},
			setup:    clientEnable,
		},
		{
			path:     "client rotate-secret",
			takesArg: true,
			synopsis: "[--tenant T] CLIENT_ID [--overlap 24h]",
			summary:  "Issue a new client secret; the previous one keeps working for --overlap.",
			detail:   "The new secret is shown once. --overlap 0s ends the previous secret at once.",
			examples: []string{
				`tally admin client rotate-secret --tenant acme 3f9c2a7e`,
				`tally admin client rotate-secret 3f9c2a7e --overlap 0s --output json | jq -r .client_secret`,
			},
			setup: clientRotateSecret,
		},
	}
}

// clientCreate is "tally admin client create": register an OAuth client and print its client_id and client_secret.
func clientCreate(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	name := fs.String("name", "", "client `name` (required)")
	grants := &listFlag{}
	fs.Var(grants, "grant", "grant `type`, repeatable (default client_credentials)")
	scopes := &listFlag{split: true}
	fs.Var(scopes, "scope", "allowed `scope`s, repeatable or space-separated")
	audiences := &listFlag{}
	fs.Var(audiences, "audience", "allowed `audience`, repeatable")
	ttl := secondsFlag(fs, "ttl", 0, "access token `lifetime`: a duration (10m) or seconds (600) (default: the server's)")
	format := fs.String("format", "", "access token `format`: jwt or opaque (default: the server's, jwt)")
	public := fs.Bool("public", false, "public client, without a secret")
	dpopBound := fs.Bool("dpop-bound", false, "require DPoP (RFC 9449) for every token request of the client")
	requirePAR := fs.Bool("require-par", false, "require pushed authorization requests (RFC 9126) from the client")
	redirects := &listFlag{}
	fs.Var(redirects, "redirect-uri", "redirect `URI` for the authorization code grant, repeatable")
	authFlags := clientAuthFlags(fs) // admin_ztauth.go
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("tenant", *tenant); err != nil {
			return err
		}
		if err := requireFlag("name", *name); err != nil {
			return err
		}
		ttlSeconds, err := wholeSeconds("ttl", *ttl)
		if err != nil {
			return err
		}
		if err := oneOf("format", *format, true, tokenFormats()...); err != nil {
			return err
		}
		auth, err := authFlags.build(s, *public)
		if err != nil {
			return err
		}
		grantTypes := grants.values
		if len(grantTypes) == 0 {
			grantTypes = []string{"client_credentials"}
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.CreateClient(ctx, connect.NewRequest(&adminv1.CreateClientRequest{
			Tenant:                             *tenant,
			Name:                               *name,
			GrantTypes:                         grantTypes,
			Scopes:                             scopes.values,
			Audiences:                          audiences.values,
			AccessTokenTtlSeconds:              ttlSeconds,
			TokenFormat:                        *format,
			Public:                             *public,
			RedirectUris:                       redirects.values,
			DpopBound:                          *dpopBound,
			RequirePushedAuthorizationRequests: *requirePAR,
			Auth:                               auth,
		}))
		if err != nil {
			return err
		}
		return s.printClientWithSecret(res.Msg.GetClient(), res.Msg.GetClientSecret())
	}
}

// clientGet is "tally admin client get": show a client.
func clientGet(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		id, err := clientTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.GetClient(ctx, connect.NewRequest(&adminv1.GetClientRequest{Tenant: *tenant, ClientId: id}))
		if err != nil {
			return err
		}
		return s.printClient(res.Msg.GetClient())
	}
}

// clientList is "tally admin client list": list the clients of a tenant.
func clientList(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		api, err := s.tenantClient(args, *tenant)
		if err != nil {
			return err
		}
		res, err := api.ListClients(ctx, connect.NewRequest(&adminv1.ListClientsRequest{Tenant: *tenant}))
		if err != nil {
			return err
		}
		return printList(s, res.Msg.GetClients(),
			[]string{"CLIENT ID", "NAME", "GRANTS", "SCOPES", "FORMAT", "TTL", "DISABLED", "REVISION"},
			func(c *adminv1.Client) []string {
				return []string{
					c.GetClientId(), c.GetName(), textList(c.GetGrantTypes()), textList(c.GetScopes()),
					c.GetTokenFormat(), textSeconds(c.GetAccessTokenTtlSeconds()), textBool(c.GetDisabled()),
					strconv.FormatUint(c.GetRevision(), 10),
				}
			})
	}
}

// clientUpdate is "tally admin client update": change a client; only the flags given are changed.
func clientUpdate(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	name := fs.String("name", "", "new client `name`")
	grants := &listFlag{}
	fs.Var(grants, "grant", "grant `type`, repeatable; replaces the list")
	scopes := &listFlag{split: true}
	fs.Var(scopes, "scope", "`scope`s, repeatable or space-separated; replaces the list")
	audiences := &listFlag{}
	fs.Var(audiences, "audience", "`audience`, repeatable; replaces the list")
	ttl := secondsFlag(fs, "ttl", 0, "access token `lifetime`: a duration (10m) or seconds (600)")
	format := fs.String("format", "", "access token `format`: jwt or opaque")
	redirects := &listFlag{}
	fs.Var(redirects, "redirect-uri", "redirect `URI`, repeatable; replaces the list")
	expected := fs.Uint64("expected-revision", 0, "fail unless the client is at this `revision` (0: no check)")
	return func(ctx context.Context, s *adminSession, args []string) error {
		id, err := clientTarget(args, *tenant)
		if err != nil {
			return err
		}
		set := setFlags(fs)
		req := &adminv1.UpdateClientRequest{Tenant: *tenant, ClientId: id, ExpectedRevision: *expected}
		changes := 0
		if set["name"] {
			if strings.TrimSpace(*name) == "" {
				return usagef("--name must not be empty")
			}
			req.Name = proto.String(*name)
			changes++
		}
		for _, l := range []struct {
			flag string
			list *listFlag
			dst  **adminv1.StringList
		}{
			{"grant", grants, &req.GrantTypes},
			{"scope", scopes, &req.Scopes},
			{"audience", audiences, &req.Audiences},
			{"redirect-uri", redirects, &req.RedirectUris},
		} {
			if set[l.flag] {
				*l.dst = &adminv1.StringList{Values: l.list.values}
				changes++
			}
		}
		if set["ttl"] {
			secs, err := wholeSeconds("ttl", *ttl)
			if err != nil {
				return err
			}
			req.AccessTokenTtlSeconds = proto.Int64(secs)
			changes++
		}
		if set["format"] {
			if err := oneOf("format", *format, false, tokenFormats()...); err != nil {
				return err
			}
			req.TokenFormat = proto.String(*format)
			changes++
		}
		if changes == 0 {
			return usagef("nothing to update: give at least one of --name, --grant, --scope, --audience, --ttl, --format, --redirect-uri")
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.UpdateClient(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		return s.printClient(res.Msg.GetClient())
	}
}

// clientDisable is "tally admin client disable": disable a client; it gets no new tokens until enabled again.
func clientDisable(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		id, err := clientTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.DisableClient(ctx, connect.NewRequest(&adminv1.DisableClientRequest{Tenant: *tenant, ClientId: id}))
		if err != nil {
			return err
		}
		return s.printClient(res.Msg.GetClient())
	}
}

// clientEnable is "tally admin client enable": enable a disabled client again.
func clientEnable(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		id, err := clientTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.EnableClient(ctx, connect.NewRequest(&adminv1.EnableClientRequest{Tenant: *tenant, ClientId: id}))
		if err != nil {
			return err
		}
		return s.printClient(res.Msg.GetClient())
	}
}

// clientRotateSecret is "tally admin client rotate-secret": issue a new client secret; the previous one keeps working for --overlap.
func clientRotateSecret(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	overlap := secondsFlag(fs, "overlap", 24*time.Hour, "how long the previous secret keeps working: a duration (24h) or seconds")
	return func(ctx context.Context, s *adminSession, args []string) error {
		id, err := clientTarget(args, *tenant)
		if err != nil {
			return err
		}
		secs, err := wholeSeconds("overlap", *overlap)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.RotateClientSecret(ctx, connect.NewRequest(&adminv1.RotateClientSecretRequest{
			Tenant: *tenant, ClientId: id, OverlapSeconds: secs,
		}))
		if err != nil {
			return err
		}
		return s.printClientWithSecret(res.Msg.GetClient(), res.Msg.GetClientSecret())
	}
}

// tenantFlag defines --tenant, which defaults to the "default" tenant.
func tenantFlag(fs *flag.FlagSet) *string {
	return fs.String("tenant", adminDefaultTenant, "tenant `ID`")
}

// clientTarget checks the tenant and returns the CLIENT_ID argument.
func clientTarget(args []string, tenant string) (string, error) {
	id, err := oneArg(args, "CLIENT_ID")
	if err != nil {
		return "", err
	}
	return id, requireFlag("tenant", tenant)
}

func (s *adminSession) printClient(c *adminv1.Client) error {
	return s.printOne(c, clientFields(c))
}

// printClientWithSecret prints a client and its new secret: in JSON the
// client object with "client_secret" added at the top level; in text the
// client, the secret and a warning that it is shown once.
func (s *adminSession) printClientWithSecret(c *adminv1.Client, secret string) error {
	if s.json {
		b, err := protoJSON(c)
		if err != nil {
			return err
		}
		if b, err = withClientSecret(b, secret); err != nil {
			return err
		}
		return s.writeJSON(b)
	}
	fields := clientFields(c)
	if secret != "" {
		fields = append(fields, field{"client_secret", secret})
	}
	if err := writeFields(s.e.stdout, fields); err != nil {
		return err
	}
	if secret == "" {
		return nil
	}
	_, err := fmt.Fprintln(s.e.stdout, secretWarning)
	return err
}

func clientFields(c *adminv1.Client) []field {
	return []field{
		{"client_id", c.GetClientId()},
		{"tenant", c.GetTenant()},
		{"name", c.GetName()},
		{"grant_types", textList(c.GetGrantTypes())},
		{"scopes", textList(c.GetScopes())},
		{"audiences", textList(c.GetAudiences())},
		{"redirect_uris", textList(c.GetRedirectUris())},
		{"access_token_ttl", textSeconds(c.GetAccessTokenTtlSeconds())},
		{"token_format", c.GetTokenFormat()},
		{"public", textBool(c.GetPublic())},
		{"dpop_bound", textBool(c.GetDpopBound())},
		{"require_pushed_authorization_requests", textBool(c.GetRequirePushedAuthorizationRequests())},
		{"disabled", textBool(c.GetDisabled())},
		{"revision", strconv.FormatUint(c.GetRevision(), 10)},
		{"active_secrets", strconv.Itoa(int(c.GetActiveSecrets()))},
		{"previous_secret_expires_at", textTime(c.GetPreviousSecretExpiresAt())},
		{"created_at", textTime(c.GetCreatedAt())},
		{"updated_at", textTime(c.GetUpdatedAt())},
		{"auth_methods", textList(c.GetAuth().GetMethods())},
	}
}

// textSeconds renders a number of seconds as a Go duration ("10m0s").
func textSeconds(secs int64) string {
	if secs == 0 {
		return ""
	}
	if secs < 0 || secs > int64(1<<63-1)/int64(time.Second) {
		return strconv.FormatInt(secs, 10) + "s"
	}
	return (time.Duration(secs) * time.Second).String()
}
