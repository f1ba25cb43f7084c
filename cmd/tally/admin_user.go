package main

import (
	"bufio"
	"context"
	"flag"
	"io"
	"strconv"
	"strings"

	"connectrpc.com/connect"

	adminv1 "github.com/tallyauth/tally/node/api/admin/v1"
)

// readPasswordStdin reads a password: the first line of stdin, without its
// line ending. Passwords are never taken from flags (they would show in ps
// and shell history).
func readPasswordStdin(r io.Reader) (string, error) {
	line, err := bufio.NewReader(io.LimitReader(r, 4096)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", usagef("--password-stdin: no password on standard input")
	}
	return pw, nil
}

func userFields(u *adminv1.User) []field {
	return []field{
		{"user_id", u.GetUserId()},
		{"tenant", u.GetTenant()},
		{"username", u.GetUsername()},
		{"email", u.GetEmail()},
		{"email_verified", textBool(u.GetEmailVerified())},
		{"name", u.GetName()},
		{"disabled", textBool(u.GetDisabled())},
		{"locked", textBool(u.GetLocked())},
		{"has_password", textBool(u.GetHasPassword())},
		{"created_at", textTime(u.GetCreatedAt())},
		{"updated_at", textTime(u.GetUpdatedAt())},
		{"revision", strconv.FormatUint(u.GetRevision(), 10)},
	}
}

func (s *adminSession) printUser(u *adminv1.User) error { return s.printOne(u, userFields(u)) }

// userTarget checks the tenant and returns the USER argument (id or
// username).
func userTarget(args []string, tenant string) (string, error) {
	u, err := oneArg(args, "USER")
	if err != nil {
		return "", err
	}
	return u, requireFlag("tenant", tenant)
}

func userCommands() []adminCommand {
	return append(userAccountCommands(), userGrantCommands()...)
}

// userAccountCommands are the "tally admin user" commands on the account
// itself: create, get, list, disable, enable, set-password.
func userAccountCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "user create",
			synopsis: "[--tenant T] --username U [--email E] [--name N] [--email-verified] [--password-stdin]",
			summary:  "Create an end user who signs in at the login page.",
			detail: "With --password-stdin the password is the first line of standard input; it\n" +
				"is hashed with argon2id by the server and never stored. Without it the user\n" +
				"cannot sign in until set-password.",
			examples: []string{
				`printf '%s\n' "$PASSWORD" | tally admin user create --tenant default --username alice --email alice@example.com --password-stdin`,
				`tally admin user create --username bob --name "Bob B" --output json | jq -r .user_id`,
			},
			setup: userCreate,
		},
		{
			path:     "user get",
			takesArg: true,
			synopsis: "[--tenant T] USER",
			summary:  "Show a user, named by id or username.",
			examples: []string{`tally admin user get --tenant default alice`, `tally admin user get u_3f9c2a7e --output json`},
			setup:    userGet,
		},
		{
			path:     "user list",
			synopsis: "[--tenant T]",
			summary:  "List the users of a tenant.",
			examples: []string{`tally admin user list --tenant default`, `tally admin user list --output json | jq -r '.[].username'`},
			setup:    userList,
		},
		{
			path:     "user disable",
			takesArg: true,
			synopsis: "[--tenant T] USER",
			summary:  "Disable a user: no sign-in, no refresh, userinfo refuses their tokens.",
			examples: []string{`tally admin user disable --tenant default alice`},
			setup:    userDisable,
		},
		{
			path:     "user enable",
			takesArg: true,
			synopsis: "[--tenant T] USER",
			summary:  "Enable a disabled user.",
			examples: []string{`tally admin user enable --tenant default alice`},
			setup:    userEnable,
		},
		{
			path:     "user set-password",
			takesArg: true,
			synopsis: "[--tenant T] USER --password-stdin",
			summary:  "Replace a user's password (read from standard input).",
			examples: []string{`printf '%s\n' "$NEW" | tally admin user set-password --tenant default alice --password-stdin`},
			setup:    userSetPassword,
		},
	}
}

// userGrantCommands are the "tally admin user" commands on what a user
// granted: remembered consents and sign-in sessions.
func userGrantCommands() []adminCommand {
	return []adminCommand{
		{
			path:     "user consents list",
			takesArg: true,
			synopsis: "[--tenant T] USER",
			summary:  "List the consents a user gave (client, scopes, expiry).",
			examples: []string{`tally admin user consents list --tenant default alice --output json | jq -r '.consents[].client_id'`},
			setup:    userConsentsList,
		},
		{
			path:     "user consents revoke",
			takesArg: true,
			synopsis: "[--tenant T] USER [--client CLIENT_ID]",
			summary:  "Revoke a user's remembered consents (all, or one client's): the user is asked again.",
			examples: []string{`tally admin user consents revoke --tenant default alice --client c_0123`},
			setup:    userConsentsRevoke,
		},
		{
			path:     "user sessions revoke",
			takesArg: true,
			synopsis: "[--tenant T] USER",
			summary:  "End every sign-in session of a user on every node (tokens already issued stay valid).",
			detail: "Sessions are sealed cookies, not records, so they cannot be listed; this\n" +
				"refuses every session that began at or before now. To end the tokens too,\n" +
				"disable the user (tally admin user disable) or revoke its refresh families.",
			examples: []string{`tally admin user sessions revoke --tenant default alice`},
			setup:    userSessionsRevoke,
		},
	}
}

// userCreate is "tally admin user create": create an end user who signs in at the login page.
func userCreate(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	username := fs.String("username", "", "`username` (required)")
	email := fs.String("email", "", "e-mail `address`")
	name := fs.String("name", "", "display `name`")
	verified := fs.Bool("email-verified", false, "the e-mail address is verified")
	pwStdin := fs.Bool("password-stdin", false, "read the password from standard input")
	return func(ctx context.Context, s *adminSession, args []string) error {
		if err := noArgs(args); err != nil {
			return err
		}
		if err := requireFlag("tenant", *tenant); err != nil {
			return err
		}
		if err := requireFlag("username", *username); err != nil {
			return err
		}
		var pw string
		if *pwStdin {
			var err error
			if pw, err = readPasswordStdin(s.stdin()); err != nil {
				return err
			}
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.CreateUser(ctx, connect.NewRequest(&adminv1.CreateUserRequest{
			Tenant: *tenant, Username: *username, Email: *email, Name: *name, Password: pw, EmailVerified: *verified,
		}))
		if err != nil {
			return err
		}
		return s.printUser(res.Msg.GetUser())
	}
}

// userGet is "tally admin user get": show a user, named by id or username.
func userGet(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		user, err := userTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.GetUser(ctx, connect.NewRequest(&adminv1.GetUserRequest{Tenant: *tenant, User: user}))
		if err != nil {
			return err
		}
		return s.printUser(res.Msg.GetUser())
	}
}

// userList is "tally admin user list": list the users of a tenant.
func userList(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		api, err := s.tenantClient(args, *tenant)
		if err != nil {
			return err
		}
		res, err := api.ListUsers(ctx, connect.NewRequest(&adminv1.ListUsersRequest{Tenant: *tenant}))
		if err != nil {
			return err
		}
		return printList(s, res.Msg.GetUsers(),
			[]string{"USER ID", "USERNAME", "EMAIL", "NAME", "DISABLED", "LOCKED"},
			func(u *adminv1.User) []string {
				return []string{u.GetUserId(), u.GetUsername(), u.GetEmail(), u.GetName(),
					textBool(u.GetDisabled()), textBool(u.GetLocked())}
			})
	}
}

// userDisable is "tally admin user disable": disable a user: no sign-in, no refresh, userinfo refuses their tokens.
func userDisable(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		user, err := userTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.DisableUser(ctx, connect.NewRequest(&adminv1.DisableUserRequest{Tenant: *tenant, User: user}))
		if err != nil {
			return err
		}
		return s.printUser(res.Msg.GetUser())
	}
}

// userEnable is "tally admin user enable": enable a disabled user.
func userEnable(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		user, err := userTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.EnableUser(ctx, connect.NewRequest(&adminv1.EnableUserRequest{Tenant: *tenant, User: user}))
		if err != nil {
			return err
		}
		return s.printUser(res.Msg.GetUser())
	}
}

// userSetPassword is "tally admin user set-password": replace a user's password (read from standard input).
func userSetPassword(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	pwStdin := fs.Bool("password-stdin", false, "read the password from standard input (required)")
	return func(ctx context.Context, s *adminSession, args []string) error {
		user, err := userTarget(args, *tenant)
		if err != nil {
			return err
		}
		if !*pwStdin {
			return usagef("--password-stdin is required")
		}
		pw, err := readPasswordStdin(s.stdin())
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.SetUserPassword(ctx, connect.NewRequest(&adminv1.SetUserPasswordRequest{Tenant: *tenant, User: user, Password: pw}))
		if err != nil {
			return err
		}
		return s.printUser(res.Msg.GetUser())
	}
}

// userConsentsList is "tally admin user consents list": list the consents a user gave (client, scopes, expiry).
func userConsentsList(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		user, err := userTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.ListUserConsents(ctx, connect.NewRequest(&adminv1.ListUserConsentsRequest{Tenant: *tenant, User: user}))
		if err != nil {
			return err
		}
		if s.json {
			return s.printOne(res.Msg, nil)
		}
		return printList(s, res.Msg.GetConsents(), []string{"CLIENT", "SCOPES", "CREATED", "EXPIRES"},
			func(c *adminv1.UserConsent) []string {
				return []string{c.GetClientId(), strings.Join(c.GetScopes(), " "), textTime(c.GetCreatedAt()), textTime(c.GetExpiresAt())}
			})
	}
}

// userConsentsRevoke is "tally admin user consents revoke": revoke a user's remembered consents (all, or one client's): the user is asked again.
func userConsentsRevoke(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	client := fs.String("client", "", "only the consent given to this client `id`")
	return func(ctx context.Context, s *adminSession, args []string) error {
		user, err := userTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.RevokeUserConsents(ctx, connect.NewRequest(&adminv1.RevokeUserConsentsRequest{Tenant: *tenant, User: user, ClientId: *client}))
		if err != nil {
			return err
		}
		return s.printOne(res.Msg, []field{{"user_id", res.Msg.GetUserId()}, {"revoked", strconv.Itoa(int(res.Msg.GetRevoked()))}})
	}
}

// userSessionsRevoke is "tally admin user sessions revoke": end every sign-in session of a user on every node (tokens already issued stay valid).
func userSessionsRevoke(fs *flag.FlagSet) adminAction {
	tenant := tenantFlag(fs)
	return func(ctx context.Context, s *adminSession, args []string) error {
		user, err := userTarget(args, *tenant)
		if err != nil {
			return err
		}
		api, err := s.client()
		if err != nil {
			return err
		}
		res, err := api.RevokeUserSessions(ctx, connect.NewRequest(&adminv1.RevokeUserSessionsRequest{Tenant: *tenant, User: user}))
		if err != nil {
			return err
		}
		return s.printOne(res.Msg, []field{{"user_id", res.Msg.GetUserId()}, {"sessions_revoked_at", textTime(res.Msg.GetSessionsRevokedAt())}})
	}
}
