package main

// tally admin: a thin command-line client of the admin Connect service
// (node/api/admin/v1). This file holds the dispatcher, the global flags, the
// connection and the output helpers; the commands live in admin_tenant.go,
// admin_client.go, admin_key.go and admin_revoke.go.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tallyauth/tally/node/api/admin/v1/adminv1connect"
)

const (
	// adminDefaultServer is the admin API of a node started with
	// "tally serve --dev".
	adminDefaultServer = "http://127.0.0.1:8080"
	// adminDefaultTokenFile is where "make run" writes the admin token,
	// relative to the working directory.
	adminDefaultTokenFile = "data/admin-token"
	// adminDefaultTenant is the tenant every --tenant flag defaults to.
	adminDefaultTenant = "default"
	// adminMaxSecretBytes bounds what is read from a token file or stdin.
	adminMaxSecretBytes = 64 << 10
)

const adminUsage = `tally admin — administer the tenants, clients, keys and revocations of a tally cluster

Usage:
  tally admin [global flags] <command> [flags] [args]

Commands:
{{commands}}
Global flags (before the command, or with any command):
  --server URL             admin API base URL (env TALLY_SERVER; default ` + adminDefaultServer + `)
  --admin-token TOKEN      admin bearer token (env TALLY_ADMIN_TOKEN)
  --admin-token-file PATH  file holding the admin token, surrounding space trimmed
                           (env TALLY_ADMIN_TOKEN_FILE)
  --output text|json       text (default) or one JSON document on stdout with
                           snake_case field names and RFC 3339 timestamps
  --timeout DURATION       deadline of the call (default 10s)

  A flag wins over its environment variable. With no token flag or variable,
  the token is read from ./` + adminDefaultTokenFile + ` (the file "make run" writes).

Flags are written -flag or --flag, and may come before or after the
positional argument (tally admin tenant get acme --output json).
The --tenant flag of every command defaults to "` + adminDefaultTenant + `".

Exit status: 0 success, 1 the server refused or failed the call, 2 usage error.
Errors print one line on stderr: "tally admin: <connect code>: <message>".

Examples:
  tally admin tenant create --name acme --display-name "Acme Corp"
  tally admin client create --tenant acme --name orders-svc --scope "read:orders write:orders" --output json
  tally admin client list --tenant acme
  tally admin key rotate --tenant acme --publish-delay 0s
  tally admin revoke --tenant acme --token-stdin < token.txt

Run "tally admin <command> -h" for the flags of a command.
`

// adminHelp is adminUsage with every command of adminCommands listed, so
// the list cannot miss one.
func adminHelp() string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, c := range adminCommands() {
		fmt.Fprintf(tw, "  %s\t%s\n", c.path, c.summary)
	}
	tw.Flush()
	return strings.Replace(adminUsage, "{{commands}}\n", b.String()+"\n", 1)
}

// runAdmin runs "tally admin …" and returns the exit code: 0 success,
// 1 failure reported by the server or the connection, 2 usage error.
func runAdmin(ctx context.Context, args []string, e env) int {
	g := newAdminGlobals()
	fs := flag.NewFlagSet("tally admin", flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {}
	g.register(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(e.stdout, adminHelp())
			return 0
		}
		fmt.Fprintln(e.stderr, `Run "tally admin -h" for usage.`)
		return 2
	}
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(e.stderr, adminHelp())
		return 2
	}
	if rest[0] == "help" {
		fmt.Fprint(e.stdout, adminHelp())
		return 0
	}

	cmds := adminCommands()
	for _, c := range cmds {
		if c.path == rest[0] {
			return runAdminCommand(ctx, c, g, rest[1:], e)
		}
	}
	var group []adminCommand
	for _, c := range cmds {
		if strings.HasPrefix(c.path, rest[0]+" ") {
			group = append(group, c)
		}
	}
	if len(group) == 0 {
		fmt.Fprintf(e.stderr, "tally admin: unknown command %q\nRun \"tally admin -h\" for usage.\n", rest[0])
		return 2
	}
	if len(rest) == 1 {
		printAdminGroupUsage(e.stderr, rest[0], group)
		return 2
	}
	switch rest[1] {
	case "-h", "-help", "--help", "help":
		printAdminGroupUsage(e.stdout, rest[0], group)
		return 0
	}
	for _, c := range group {
		if len(rest) > 2 && c.path == rest[0]+" "+rest[1]+" "+rest[2] { // three-word paths (gateway route set)
			return runAdminCommand(ctx, c, g, rest[3:], e)
		}
	}
	for _, c := range group {
		if c.path == rest[0]+" "+rest[1] {
			return runAdminCommand(ctx, c, g, rest[2:], e)
		}
		if len(rest) > 2 && c.path == rest[0]+" "+rest[1]+" "+rest[2] { // "key policy set"
			return runAdminCommand(ctx, c, g, rest[3:], e)
		}
	}
	fmt.Fprintf(e.stderr, "tally admin %s: unknown command %q\nRun \"tally admin %s -h\" for usage.\n", rest[0], rest[1], rest[0])
	return 2
}

// adminCommand is one "tally admin …" command.
type adminCommand struct {
	path     string // words after "tally admin", e.g. "client create"
	synopsis string // arguments, e.g. "--tenant T CLIENT_ID"
	summary  string // one line
	takesArg bool   // takes one positional argument (flags may follow it)
	detail   string // optional paragraph(s) shown by -h
	examples []string
	// setup registers the command's own flags on fs and returns the action
	// that runs once fs is parsed, with the positional arguments.
	setup func(fs *flag.FlagSet) adminAction
}

// adminAction runs a parsed command. It returns a *adminUsageError for bad
// input found after flag parsing.
type adminAction func(ctx context.Context, s *adminSession, args []string) error

// adminCommands lists every command; the first word of a path with two words
// is a group ("client"), listed by "tally admin client -h".
func adminCommands() []adminCommand {
	var cmds []adminCommand
	cmds = append(cmds, tenantCommands()...)
	cmds = append(cmds, clientCommands()...)
	cmds = append(cmds, keyCommands()...)
	cmds = append(cmds, keyPolicyCommands()...) // admin_keypolicy.go
	cmds = append(cmds, revokeCommands()...)
	cmds = append(cmds, clusterCommands()...)
	cmds = append(cmds, versionCommands()...)
	cmds = append(cmds, recoverCommand())
	cmds = append(cmds, userCommands()...)
	cmds = append(cmds, clusterInitCommands()...)
	cmds = append(cmds, deleteCommands()...)  // admin_delete.go
	cmds = append(cmds, trustCommands()...)   // admin_ztauth.go
	cmds = append(cmds, gatewayCommands()...) // admin_gateway.go
	cmds = append(cmds, credentialCommands()...)
	cmds = append(cmds, auditCommands()...)
	return cmds
}

func printAdminGroupUsage(w io.Writer, group string, cmds []adminCommand) {
	fmt.Fprintf(w, "Usage:\n  tally admin %s <command> [flags] [args]\n\nCommands:\n", group)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range cmds {
		fmt.Fprintf(tw, "  %s\t%s\n", strings.TrimPrefix(c.path, group+" "), c.summary)
	}
	tw.Flush()
	fmt.Fprint(w, "\nExamples:\n")
	for _, c := range cmds {
		if len(c.examples) > 0 {
			fmt.Fprintf(w, "  %s\n", c.examples[0])
		}
	}
	fmt.Fprintf(w, "\nRun \"tally admin %s <command> -h\" for the flags of a command, \"tally admin -h\" for the global flags.\n", group)
}

func printAdminCommandUsage(w io.Writer, c adminCommand) {
	fmt.Fprintf(w, "Usage:\n  tally admin %s %s\n\n%s\n", c.path, c.synopsis, c.summary)
	if c.detail != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(c.detail, "\n"))
	}
	// Print the command's own flags and the global ones apart, from fresh
	// flag sets so that the defaults shown are the real defaults.
	own := flag.NewFlagSet(c.path, flag.ContinueOnError)
	c.setup(own)
	global := flag.NewFlagSet("global", flag.ContinueOnError)
	newAdminGlobals().register(global)
	ownTitle := "Flags (-flag or --flag):"
	if c.takesArg {
		ownTitle = "Flags (-flag or --flag, before or after the positional argument):"
	}
	for _, part := range []struct {
		title string
		fs    *flag.FlagSet
	}{
		{ownTitle, own},
		{"Global flags:", global},
	} {
		fmt.Fprintf(w, "\n%s\n", part.title)
		part.fs.SetOutput(w)
		part.fs.PrintDefaults()
	}
	if len(c.examples) > 0 {
		fmt.Fprint(w, "\nExamples:\n")
		for _, ex := range c.examples {
			fmt.Fprintf(w, "  %s\n", ex)
		}
	}
}

func runAdminCommand(ctx context.Context, c adminCommand, g *adminGlobals, args []string, e env) int {
	fs := flag.NewFlagSet("tally admin "+c.path, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {}
	g.register(fs)
	action := c.setup(fs)
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printAdminCommandUsage(e.stdout, c)
			return 0
		}
		// The flag package has already printed what was wrong.
		fmt.Fprintf(e.stderr, "Run \"tally admin %s -h\" for usage.\n", c.path)
		return 2
	}
	s, err := newAdminSession(g, e)
	if err == nil {
		defer s.close()
		ctx, cancel := context.WithTimeout(ctx, g.timeout)
		defer cancel()
		err = action(ctx, s, positional)
	}
	return reportAdminError(e.stderr, c.path, err)
}

// reportAdminError prints err as one line on w and returns the exit code.
func reportAdminError(w io.Writer, path string, err error) int {
	if err == nil {
		return 0
	}
	var ue *adminUsageError
	if errors.As(err, &ue) {
		fmt.Fprintf(w, "tally admin %s: %s\nRun \"tally admin %s -h\" for usage.\n", path, oneLine(ue.msg), path)
		return 2
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		fmt.Fprintf(w, "tally admin: %s: %s\n", ce.Code(), oneLine(ce.Message()))
		return 1
	}
	fmt.Fprintf(w, "tally admin: %s\n", oneLine(err.Error()))
	return 1
}

// adminUsageError is bad command-line input; it exits with status 2.
type adminUsageError struct{ msg string }

func (e *adminUsageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &adminUsageError{msg: fmt.Sprintf(format, args...)}
}

// parseInterspersed parses fs from args, allowing flags after positional
// arguments: it parses, takes the first non-flag argument as positional, and
// parses the rest again. After a "--" terminator everything is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			return append(positional, rest...), nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// oneArg returns the single positional argument named what.
func oneArg(args []string, what string) (string, error) {
	switch {
	case len(args) == 0:
		return "", usagef("missing %s", what)
	case len(args) > 1:
		return "", usagef("unexpected argument %q after %s", args[1], what)
	case strings.TrimSpace(args[0]) == "":
		return "", usagef("%s must not be empty", what)
	}
	return args[0], nil
}

func noArgs(args []string) error {
	if len(args) > 0 {
		return usagef("unexpected argument %q", args[0])
	}
	return nil
}

// requireFlag fails unless the string flag name has a non-blank value.
func requireFlag(name, value string) error {
	if strings.TrimSpace(value) == "" {
		return usagef("--%s is required", name)
	}
	return nil
}

// setFlags reports which flags of fs were set on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// wholeSeconds converts the duration flag name to seconds; it must be a
// non-negative whole number of seconds.
func wholeSeconds(name string, d time.Duration) (int64, error) {
	if d < 0 {
		return 0, usagef("--%s must not be negative, got %s", name, d)
	}
	if d%time.Second != 0 {
		return 0, usagef("--%s must be a whole number of seconds, got %s", name, d)
	}
	return int64(d / time.Second), nil
}

// oneOf fails unless value is one of allowed (or empty, when optional).
func oneOf(name, value string, optional bool, allowed ...string) error {
	if value == "" && optional {
		return nil
	}
	for _, a := range allowed {
		if value == a {
			return nil
		}
	}
	return usagef("--%s must be one of %s, got %q", name, strings.Join(allowed, ", "), value)
}

// listFlag is a repeatable string flag. Values are kept in order without
// duplicates; with split, each value is also split at white space (so
// --scope "a b" is --scope a --scope b). An empty value adds nothing but
// still counts as set, which lets client update --scope="" clear a list.
type listFlag struct {
	values []string
	split  bool
}

func (l *listFlag) String() string { return strings.Join(l.values, " ") }

func (l *listFlag) Set(v string) error {
	var parts []string
	if l.split {
		parts = strings.Fields(v)
	} else if v = strings.TrimSpace(v); v != "" {
		parts = []string{v}
	}
	for _, p := range parts {
		dup := false
		for _, have := range l.values {
			if have == p {
				dup = true
				break
			}
		}
		if !dup {
			l.values = append(l.values, p)
		}
	}
	return nil
}

// adminGlobals are the flags every admin command accepts. Empty strings mean
// "not given"; resolution against the environment happens in
// newAdminSession, so a flag given before the command and one given after it
// land in the same field (the later one wins).
type adminGlobals struct {
	server    string
	token     string
	tokenFile string
	output    string
	timeout   time.Duration
	// mTLS to an admin listener (tally serve --admin-listen).
	caFile, certFile, keyFile string
}

func newAdminGlobals() *adminGlobals {
	return &adminGlobals{output: "text", timeout: 10 * time.Second}
}

// register defines the global flags on fs, keeping their current values.
func (g *adminGlobals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.server, "server", g.server, "admin API base `URL` (env TALLY_SERVER; default "+adminDefaultServer+")")
	fs.StringVar(&g.token, "admin-token", g.token, "admin bearer `token` (env TALLY_ADMIN_TOKEN; default: the contents of ./"+adminDefaultTokenFile+")")
	fs.StringVar(&g.tokenFile, "admin-token-file", g.tokenFile, "`file` holding the admin token (env TALLY_ADMIN_TOKEN_FILE)")
	fs.StringVar(&g.output, "output", g.output, "output `format`: text or json")
	fs.DurationVar(&g.timeout, "timeout", g.timeout, "deadline of the call")
	fs.StringVar(&g.caFile, "admin-ca", g.caFile, "PEM `file` of the CA of the admin listener's certificate (env TALLY_ADMIN_CA)")
	fs.StringVar(&g.certFile, "admin-cert", g.certFile, "PEM client certificate `file` for a mutual-TLS admin listener (env TALLY_ADMIN_CERT)")
	fs.StringVar(&g.keyFile, "admin-key", g.keyFile, "PEM private key `file` of --admin-cert (env TALLY_ADMIN_KEY)")
}

// adminTLS is the client TLS configuration of --admin-ca, --admin-cert and
// --admin-key (or their environment variables); nil when none is set.
func (g *adminGlobals) adminTLS(getenv func(string) string) (*tls.Config, error) {
	pick := func(v, env string) string {
		if v != "" {
			return v
		}
		return getenv(env)
	}
	ca, cert, key := pick(g.caFile, "TALLY_ADMIN_CA"), pick(g.certFile, "TALLY_ADMIN_CERT"), pick(g.keyFile, "TALLY_ADMIN_KEY")
	if ca == "" && cert == "" && key == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("--admin-ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--admin-ca %s: no PEM certificate", ca)
		}
	}
	if (cert == "") != (key == "") {
		return nil, usagef("--admin-cert and --admin-key come together")
	}
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("--admin-cert: %w", err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}

// resolveToken finds the admin token: --admin-token, --admin-token-file,
// TALLY_ADMIN_TOKEN, TALLY_ADMIN_TOKEN_FILE, then ./data/admin-token.
func (g *adminGlobals) resolveToken(getenv func(string) string) (string, error) {
	if g.token != "" && g.tokenFile != "" {
		return "", usagef("give --admin-token or --admin-token-file, not both")
	}
	var token string
	var err error
	switch {
	case g.token != "":
		token = strings.TrimSpace(g.token)
	case g.tokenFile != "":
		token, err = readSecretFile(g.tokenFile)
	case getenv("TALLY_ADMIN_TOKEN") != "":
		token = strings.TrimSpace(getenv("TALLY_ADMIN_TOKEN"))
	case getenv("TALLY_ADMIN_TOKEN_FILE") != "":
		token, err = readSecretFile(getenv("TALLY_ADMIN_TOKEN_FILE"))
	default:
		token, err = readSecretFile(adminDefaultTokenFile)
		if errors.Is(err, os.ErrNotExist) {
			return "", usagef("no admin token: give --admin-token or --admin-token-file, set TALLY_ADMIN_TOKEN or TALLY_ADMIN_TOKEN_FILE, or run from the directory where \"make run\" wrote ./%s", adminDefaultTokenFile)
		}
	}
	if err != nil {
		return "", usagef("admin token: %v", err)
	}
	if token == "" {
		return "", usagef("the admin token is empty")
	}
	// RFC 6750 section 2.1: a bearer token is visible ASCII without spaces.
	for _, r := range token {
		if r <= ' ' || r > '~' {
			return "", usagef("the admin token holds a character not allowed in a bearer token (RFC 6750 section 2.1)")
		}
	}
	return token, nil
}

// readSecretFile reads a small file and trims surrounding white space.
func readSecretFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, adminMaxSecretBytes+1))
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if len(b) > adminMaxSecretBytes {
		return "", fmt.Errorf("%s is larger than %d bytes", path, adminMaxSecretBytes)
	}
	return strings.TrimSpace(string(b)), nil
}

// adminSession is the state of one admin command run: where to print, how,
// and the API client, which is built on first use so that flag errors are
// reported before a missing token.
type adminSession struct {
	e      env
	g      *adminGlobals
	json   bool
	server string
	hc     *http.Client
	api    adminv1connect.AdminServiceClient
}

func newAdminSession(g *adminGlobals, e env) (*adminSession, error) {
	s := &adminSession{e: e, g: g}
	switch g.output {
	case "text":
	case "json":
		s.json = true
	default:
		return nil, usagef("--output must be text or json, got %q", g.output)
	}
	if g.timeout <= 0 {
		return nil, usagef("--timeout must be positive, got %s", g.timeout)
	}
	s.server = g.server
	if s.server == "" {
		s.server = s.getenv("TALLY_SERVER")
	}
	if s.server == "" {
		s.server = adminDefaultServer
	}
	u, err := url.Parse(s.server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, usagef("--server must be an http:// or https:// URL, got %q", s.server)
	}
	return s, nil
}

func (s *adminSession) getenv(key string) string {
	if s.e.getenv == nil {
		return ""
	}
	return s.e.getenv(key)
}

// client returns the admin API client, resolving the token on first use.
// tenantClient checks the arguments of a tenant-wide command (no
// positional arguments, --tenant set) and returns the admin API client.
func (s *adminSession) tenantClient(args []string, tenant string) (adminv1connect.AdminServiceClient, error) {
	if err := noArgs(args); err != nil {
		return nil, err
	}
	if err := requireFlag("tenant", tenant); err != nil {
		return nil, err
	}
	return s.client()
}

func (s *adminSession) client() (adminv1connect.AdminServiceClient, error) {
	if s.api != nil {
		return s.api, nil
	}
	token, err := s.g.resolveToken(s.getenv)
	if err != nil {
		return nil, err
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if transport.TLSClientConfig, err = s.g.adminTLS(s.getenv); err != nil {
		return nil, err
	}
	s.hc = &http.Client{
		Transport: transport,
		// Never follow a redirect with the admin token attached.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	bearer := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+token)
			return next(ctx, req)
		}
	})
	s.api = adminv1connect.NewAdminServiceClient(s.hc, s.server, connect.WithInterceptors(bearer))
	return s.api, nil
}

func (s *adminSession) close() {
	if s.hc != nil {
		s.hc.CloseIdleConnections()
	}
}

// stdin returns the command's standard input, empty if there is none.
func (s *adminSession) stdin() io.Reader {
	if s.e.stdin == nil {
		return strings.NewReader("")
	}
	return s.e.stdin
}

// protoJSON renders m as compact JSON with the proto (snake_case) field
// names, every field present, RFC 3339 timestamps, and 64-bit integers as
// JSON numbers (protojson writes them as strings, which makes jq
// comparisons silently false; every value tally uses fits a float64's 53
// bits or is an index that jq users compare, not add).
func protoJSON(m proto.Message) ([]byte, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return json.Marshal(int64Numbers(v, m.ProtoReflect().Descriptor()))
}

// int64Numbers turns the string-encoded 64-bit integer fields of md in the
// decoded protojson value v into JSON numbers.
func int64Numbers(v any, md protoreflect.MessageDescriptor) any {
	obj, ok := v.(map[string]any)
	if !ok || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return v
	}
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		name := string(fd.Name())
		val, ok := obj[name]
		if !ok {
			continue
		}
		conv := func(x any) any { return int64Field(x, fd.MapValue()) }
		if !fd.IsMap() {
			conv = func(x any) any { return int64Field(x, fd) }
		}
		switch {
		case fd.IsList():
			if list, ok := val.([]any); ok {
				for j := range list {
					list[j] = conv(list[j])
				}
			}
		case fd.IsMap():
			if m, ok := val.(map[string]any); ok {
				for k := range m {
					m[k] = conv(m[k])
				}
			}
		default:
			obj[name] = conv(val)
		}
	}
	return obj
}

// int64Field converts one value of field fd.
func int64Field(x any, fd protoreflect.FieldDescriptor) any {
	switch fd.Kind() {
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		if s, ok := x.(string); ok {
			return json.Number(s)
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return int64Numbers(x, fd.Message())
	}
	return x
}

// protoJSONList renders ms as a compact JSON array.
func protoJSONList[M proto.Message](ms []M) ([]byte, error) {
	buf := []byte{'['}
	for i, m := range ms {
		if i > 0 {
			buf = append(buf, ',')
		}
		b, err := protoJSON(m)
		if err != nil {
			return nil, err
		}
		buf = append(buf, b...)
	}
	return append(buf, ']'), nil
}

// withClientSecret adds "client_secret" as the last top-level field of the
// compact JSON object obj.
func withClientSecret(obj []byte, secret string) ([]byte, error) {
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return nil, fmt.Errorf("not a JSON object: %.40q", obj)
	}
	sec, err := json.Marshal(secret)
	if err != nil {
		return nil, err
	}
	out := append([]byte(nil), obj[:len(obj)-1]...)
	if len(obj) > 2 {
		out = append(out, ',')
	}
	out = append(out, `"client_secret":`...)
	out = append(out, sec...)
	return append(out, '}'), nil
}

// writeJSON prints compact JSON indented, as one document, on stdout.
func (s *adminSession) writeJSON(compact []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, compact, "", "  "); err != nil {
		return err
	}
	buf.WriteByte('\n')
	_, err := s.e.stdout.Write(buf.Bytes())
	return err
}

// printOne prints one message: as JSON, or as "key: value" lines.
func (s *adminSession) printOne(m proto.Message, fields []field) error {
	if s.json {
		b, err := protoJSON(m)
		if err != nil {
			return err
		}
		return s.writeJSON(b)
	}
	return writeFields(s.e.stdout, fields)
}

// printList prints messages: as a JSON array, or as a table.
func printList[M proto.Message](s *adminSession, ms []M, header []string, row func(M) []string) error {
	if s.json {
		b, err := protoJSONList(ms)
		if err != nil {
			return err
		}
		return s.writeJSON(b)
	}
	rows := make([][]string, 0, len(ms))
	for _, m := range ms {
		rows = append(rows, row(m))
	}
	return writeTable(s.e.stdout, header, rows)
}

// field is one "key: value" line of text output.
type field struct{ key, value string }

func writeFields(w io.Writer, fields []field) error {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	for _, f := range fields {
		fmt.Fprintf(tw, "%s:\t%s\n", f.key, textValue(f.value))
	}
	return tw.Flush()
}

func writeTable(w io.Writer, header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = textValue(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// textValue makes a server-provided value safe to print in a terminal
// table: "-" for empty, control and bidi characters and invalid UTF-8
// escaped, so a value can neither break the layout nor drive the terminal.
func textValue(v string) string {
	if v == "" {
		return "-"
	}
	return escapeControls(v)
}

func escapeControls(v string) string {
	var b strings.Builder
	for i, w := 0, 0; i < len(v); i += w {
		r, size := utf8.DecodeRuneInString(v[i:])
		w = size
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, v[i])
		case unicode.IsControl(r) || unicode.Is(unicode.Bidi_Control, r):
			if r < 0x100 {
				fmt.Fprintf(&b, `\x%02x`, r)
			} else {
				fmt.Fprintf(&b, `\u%04x`, r)
			}
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// oneLine makes a message printable on one line of stderr.
func oneLine(msg string) string {
	return escapeControls(strings.TrimSpace(msg))
}

func textTime(ts *timestamppb.Timestamp) string {
	if ts == nil || ts.CheckValid() != nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

func textBool(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func textList(vs []string) string {
	return strings.Join(vs, " ")
}

// seconds is a duration flag that takes a Go duration ("10m", "90s") or a
// plain number of seconds ("600"); wholeSeconds checks the result.
type seconds time.Duration

func (d *seconds) String() string { return time.Duration(*d).String() }

func (d *seconds) Set(s string) error {
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 || n > math.MaxInt64/int64(time.Second) {
			return errors.New("out of range")
		}
		*d = seconds(time.Duration(n) * time.Second)
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return errors.New(`want a duration like "10m" or "90s", or a number of seconds`)
	}
	*d = seconds(v)
	return nil
}

// secondsFlag defines a seconds flag on fs.
func secondsFlag(fs *flag.FlagSet, name string, def time.Duration, usage string) *time.Duration {
	d := seconds(def)
	fs.Var(&d, name, usage)
	return (*time.Duration)(&d)
}
