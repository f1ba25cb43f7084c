package main

import (
	"context"
	"flag"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

func revokeCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "revoke",
			synopsis: "[--tenant T] (--token TOKEN | --token-stdin | --jti J --expires-at RFC3339) [--reason R]",
			summary:  "Revoke an access token, by its value or by its jti and expiry.",
			detail: "Give exactly one of --token, --token-stdin or --jti. --token-stdin reads the\n" +
				"token from standard input, which keeps it out of the process list and shell\n" +
				"history. --jti needs --expires-at, the token's exp as RFC 3339, so that the\n" +
				"revocation is kept exactly as long as the token could be used. The revocation\n" +
				"is published on the event log for resource servers.",
			examples: []string{
				`tally admin revoke --tenant acme --token-stdin --reason "leaked in CI log" < token.txt`,
				`tally admin revoke --tenant acme --jti 01J9ZK3V7Q --expires-at 2025-06-01T12:10:00Z`,
			},
			setup: revokeToken,
		},
		{
			path:     "revocation list",
			synopsis: "[--tenant T]",
			summary:  "List a tenant's revocations.",
			examples: []string{`tally admin revocation list --tenant acme`, `tally admin revocation list --output json | jq length`},
			setup:    revocationList,
		},
	}
}

// revokeToken is "tally admin revoke": revoke an access token, by its value or by its jti and expiry.
func revokeToken(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	token := fs.String("token", "", "the access `token` to revoke")
	fromStdin := fs.Bool("token-stdin", false, "read the token to revoke from standard input")
	jti := fs.String("jti", "", "`id` (jti claim) of the token to revoke")
	expiresAt := fs.String("expires-at", "", "expiry of the token named by --jti, RFC 3339 `time`")
	reason := fs.String("reason", "", "why, recorded with the revocation")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("tenant", *tenant); err != nil {
			return err
		}
		set := setFlags(fs)
		ways := 0
		for _, f := range []string{"token", "token-stdin", "jti"} {
			if set[f] {
				ways++
			}
		}
		if ways != 1 || (set["token-stdin"] && !*fromStdin) {
			return usagef("give exactly one of --token, --token-stdin or --jti (with --expires-at)")
		}
		if set["expires-at"] && !set["jti"] {
			return usagef("--expires-at goes with --jti")
		}
		req := &adminv1.RevokeTokenRequest{Tenant: *tenant, Reason: *reason}
		switch {
		case set["token"]:
			req.Token = strings.TrimSpace(*token)
			if req.Token == "" {
				return usagef("--token is empty")
			}
		case set["token-stdin"]:
			t, err := readTokenStdin(s.stdin())
			if err != nil {
				return err
			}
			req.Token = t
		default:
			req.Jti = strings.TrimSpace(*jti)
			if req.Jti == "" {
				return usagef("--jti is empty")
			}
			if !set["expires-at"] {
				return usagef("--jti needs --expires-at, the token's expiry (RFC 3339)")
			}
			exp, err := time.Parse(time.RFC3339, *expiresAt)
			if err != nil {
				return usagef("--expires-at must be an RFC 3339 time such as 2025-06-01T12:10:00Z, got %q", *expiresAt)
			}
			req.ExpiresAt = timestamppb.New(exp)
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.RevokeToken(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		r := res.Msg.GetRevocation()
		return s.printOne(r, revocationFields(r))
	}
}

// revocationList is "tally admin revocation list": list a tenant's revocations.
func revocationList(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		api, err := s.tenantClient(args, *tenant)
		if err != nil {
			return err
		}
		res, err := api.ListRevocations(ctx, connect.NewRequest(&adminv1.ListRevocationsRequest{Tenant: *tenant}))
		if err != nil {
			return err
		}
		return printList(s, res.Msg.GetRevocations(),
			[]string{"JTI", "CLIENT ID", "SUBJECT", "REVOKED AT", "EXPIRES AT", "REASON"},
			func(r *adminv1.Revocation) []string {
				return []string{r.GetJti(), r.GetClientId(), r.GetSubject(), textTime(r.GetRevokedAt()), textTime(r.GetExpiresAt()), r.GetReason()}
			})
	}
}

// readTokenStdin reads one token from r: surrounding white space trimmed,
// none inside, at most adminMaxSecretBytes.
func readTokenStdin(r io.Reader) (string, error) {
	b, err := io.ReadAll(io.LimitReader(r, adminMaxSecretBytes+1))
	if err != nil {
		return "", usagef("read the token from stdin: %v", err)
	}
	if len(b) > adminMaxSecretBytes {
		return "", usagef("the token on stdin is longer than %d bytes", adminMaxSecretBytes)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return "", usagef("no token on stdin")
	}
	if strings.ContainsFunc(t, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }) {
		return "", usagef("stdin must hold exactly one token")
	}
	return t, nil
}

func revocationFields(r *adminv1.Revocation) []field {
	return []field{
		{"tenant", r.GetTenant()},
		{"jti", r.GetJti()},
		{"client_id", r.GetClientId()},
		{"subject", r.GetSubject()},
		{"revoked_at", textTime(r.GetRevokedAt())},
		{"expires_at", textTime(r.GetExpiresAt())},
		{"reason", r.GetReason()},
	}
}
