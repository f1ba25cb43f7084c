package main

// tally admin cluster init: everything a new cluster's nodes share or need,
// created once into one directory — what the compose cluster's init
// container runs on first start (an image without a shell cannot script
// "ca init" and "node-cert").

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/tallyauth/tally/raft"
)

func clusterInitCommands() []adminCommand {
	return []adminCommand{{
		path:     "cluster init",
		synopsis: "--out DIR --node ID=NAME[,NAME…] [--node …]",
		summary:  "Create, where missing, a cluster CA, one certificate per node, a key-encryption key and an admin credential in DIR. Runs locally.",
		detail: "DIR receives ca/ (ca.pem, ca-key.pem), ID/tls/ (node.pem, node-key.pem, ca.pem) per\n" +
			"--node, kek (32 random bytes, base64) and admin-token, secrets mode 0600. NAMEs are the\n" +
			"DNS names and IP addresses peers and clients dial the node at. What already exists\n" +
			"is kept, so running it again is harmless. Keep ca/ca-key.pem offline in production.",
		examples: []string{`tally admin cluster init --out /secrets --node node1=node1,127.0.0.1 --node node2=node2,127.0.0.1`},
		setup: func(fs *flag.FlagSet) adminAction {
			out := fs.String("out", "", "`directory` to create the files in (required)")
			validity := fs.Duration("validity", 365*24*time.Hour, "how long the node certificates are valid")
			nodes := &listFlag{}
			fs.Var(nodes, "node", "`ID=NAME[,NAME…]`: a node and the names it is dialed at (repeatable)")
			return func(ctx context.Context, s *adminSession, args []string) error {
				if err := noArgs(args); err != nil {
					return err
				}
				if err := requireFlag("out", *out); err != nil {
					return err
				}
				if len(nodes.values) == 0 {
					return usagef("give at least one --node ID=NAME[,NAME…]")
				}
				var opts []raft.CertOptions
				for _, v := range nodes.values {
					id, names, ok := strings.Cut(v, "=")
					if !ok || id == "" || names == "" || strings.ContainsAny(id, "/\\ ") {
						return usagef("--node %q: want ID=NAME[,NAME…]", v)
					}
					o := raft.CertOptions{NodeID: id, Validity: *validity}
					for _, n := range strings.Split(names, ",") {
						if ip := net.ParseIP(n); ip != nil {
							o.IPs = append(o.IPs, ip)
						} else if n != "" {
							o.DNSNames = append(o.DNSNames, n)
						}
					}
					opts = append(opts, o)
				}
				caDir := filepath.Join(*out, "ca")
				fields := []field{{"ca_cert", filepath.Join(caDir, raft.CACertFile)}}
				if !exists(filepath.Join(caDir, raft.CAKeyFile)) {
					if err := raft.InitCADir(caDir, time.Time{}); err != nil {
						return err
					}
				}
				for _, o := range opts {
					dir := filepath.Join(*out, o.NodeID, "tls")
					if !exists(filepath.Join(dir, raft.NodeCertFile)) {
						if err := raft.IssueNodeCertDir(caDir, dir, o); err != nil {
							return err
						}
					}
					fields = append(fields, field{o.NodeID + "_tls_dir", dir})
				}
				for _, name := range []string{"kek", "admin-token"} {
					path := filepath.Join(*out, name)
					if err := writeSecretOnce(path); err != nil {
						return err
					}
					fields = append(fields, field{strings.ReplaceAll(name, "-", "_") + "_file", path})
				}
				return s.printFields(fields)
			}
		},
	}}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// writeSecretOnce writes 32 random bytes as unpadded base64url text to
// path (mode 0600) unless the file exists.
func writeSecretOnce(path string) error {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := f.WriteString(base64.RawURLEncoding.EncodeToString(b)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
