package loadtest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// metadataServer serves documents by path and records the paths asked for.
type metadataServer struct {
	*httptest.Server
	mu    sync.Mutex
	docs  map[string]string
	asked []string
}

func newMetadataServer(t *testing.T) *metadataServer {
	s := &metadataServer{docs: map[string]string{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.asked = append(s.asked, r.URL.Path)
		doc, ok := s.docs[r.URL.Path]
		s.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(doc))
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *metadataServer) set(path string, md any) {
	b, _ := json.Marshal(md)
	s.mu.Lock()
	s.docs[path] = string(b)
	s.mu.Unlock()
}

func (s *metadataServer) paths() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.asked...)
}

func TestDiscover(t *testing.T) {
	for _, tc := range []struct {
		name       string
		issuerPath string            // appended to the server URL
		docs       map[string]string // path -> issuer path in the document ("" = same as issuer)
		noToken    bool
		wantAsked  []string
		wantErr    bool
	}{
		{
			name:       "path insertion",
			issuerPath: "/t/acme",
			docs:       map[string]string{"/.well-known/oauth-authorization-server/t/acme": ""},
			wantAsked:  []string{"/.well-known/oauth-authorization-server/t/acme"},
		},
		{
			name:       "trailing slash dropped before insertion",
			issuerPath: "/t/acme/",
			docs:       map[string]string{"/.well-known/oauth-authorization-server/t/acme": ""},
			wantAsked:  []string{"/.well-known/oauth-authorization-server/t/acme"},
		},
		{
			name:       "no path",
			issuerPath: "",
			docs:       map[string]string{"/.well-known/oauth-authorization-server": ""},
			wantAsked:  []string{"/.well-known/oauth-authorization-server"},
		},
		{
			name:       "falls back to openid-configuration",
			issuerPath: "/t/acme",
			docs:       map[string]string{"/t/acme/.well-known/openid-configuration": ""},
			wantAsked:  []string{"/.well-known/oauth-authorization-server/t/acme", "/t/acme/.well-known/openid-configuration"},
		},
		{
			name:       "issuer mismatch falls back, then fails",
			issuerPath: "/t/acme",
			docs: map[string]string{
				"/.well-known/oauth-authorization-server/t/acme": "/t/other",
				"/t/acme/.well-known/openid-configuration":       "/t/other",
			},
			wantAsked: []string{"/.well-known/oauth-authorization-server/t/acme", "/t/acme/.well-known/openid-configuration"},
			wantErr:   true,
		},
		{
			name:       "no token endpoint",
			issuerPath: "/t/acme",
			docs:       map[string]string{"/.well-known/oauth-authorization-server/t/acme": ""},
			noToken:    true,
			wantAsked:  []string{"/.well-known/oauth-authorization-server/t/acme", "/t/acme/.well-known/openid-configuration"},
			wantErr:    true,
		},
		{
			name:       "nothing there",
			issuerPath: "/t/acme",
			wantAsked:  []string{"/.well-known/oauth-authorization-server/t/acme", "/t/acme/.well-known/openid-configuration"},
			wantErr:    true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newMetadataServer(t)
			issuer := s.URL + tc.issuerPath
			for path, docIssuer := range tc.docs {
				md := Metadata{Issuer: issuer, TokenEndpoint: issuer + "/token"}
				if docIssuer != "" {
					md.Issuer = s.URL + docIssuer
				}
				if tc.noToken {
					md.TokenEndpoint = ""
				}
				s.set(path, md)
			}
			md, err := Discover(context.Background(), issuer)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("Discover = %+v, want an error", md)
				}
				if tc.noToken && !errors.Is(err, ErrNoTokenEndpoint) {
					t.Errorf("error %v is not ErrNoTokenEndpoint", err)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if md.TokenEndpoint != issuer+"/token" || md.Issuer != issuer {
					t.Errorf("metadata = %+v", md)
				}
			}
			if got := s.paths(); strings.Join(got, " ") != strings.Join(tc.wantAsked, " ") {
				t.Errorf("asked %v, want %v", got, tc.wantAsked)
			}
		})
	}
}

func TestDiscoverRejects(t *testing.T) {
	var base string
	s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/.well-known/oauth-authorization-server/junk" {
			_, _ = w.Write([]byte("{not json"))
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"issuer":"` + base + `/a","token_endpoint":"/relative/token"}`))
	}))
	base = "http://" + s.Listener.Addr().String()
	s.Start()
	t.Cleanup(s.Close)
	for _, issuer := range []string{
		"not a url",
		"ftp://127.0.0.1/x",
		s.URL + "/a?x=1",
		s.URL + "/a",    // relative token endpoint
		s.URL + "/junk", // not JSON, and the fallback has the wrong issuer
	} {
		if md, err := Discover(context.Background(), issuer); err == nil {
			t.Errorf("Discover(%q) = %+v, want an error", issuer, md)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Discover(ctx, s.URL+"/a"); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled Discover: %v", err)
	}
}

// A node of a cluster with one issuer URL (make cluster, the compose
// cluster) names the front door as issuer: load aimed at the node goes to
// the node, with the front door's issuer as the tokens' iss. Another
// tenant path is refused, and Discover itself stays strict.
func TestDiscoverTargetThroughNode(t *testing.T) {
	node := newMetadataServer(t)
	const front = "http://front.example:8080"
	node.set("/t/default/.well-known/openid-configuration", map[string]string{
		"issuer":                 front + "/t/default",
		"token_endpoint":         front + "/t/default/oauth2/token",
		"introspection_endpoint": front + "/t/default/oauth2/introspect",
		"authorization_endpoint": front + "/t/default/oauth2/authorize",
	})
	node.set("/t/other/.well-known/openid-configuration", map[string]string{
		"issuer":         front + "/t/default",
		"token_endpoint": front + "/t/default/oauth2/token",
	})
	if _, err := Discover(context.Background(), node.URL+"/t/default"); err == nil {
		t.Fatal("Discover accepted a document naming another issuer")
	}
	tg, err := DiscoverTarget(context.Background(), node.URL+"/t/default")
	if err != nil {
		t.Fatal(err)
	}
	want := Target{
		Issuer:        front + "/t/default",
		TokenURL:      node.URL + "/t/default/oauth2/token",
		IntrospectURL: node.URL + "/t/default/oauth2/introspect",
		AuthorizeURL:  node.URL + "/t/default/oauth2/authorize",
	}
	if tg != want {
		t.Errorf("DiscoverTarget through a node = %+v, want %+v", tg, want)
	}
	if tg, err := DiscoverTarget(context.Background(), node.URL+"/t/other"); err == nil {
		t.Errorf("a document of another tenant path accepted: %+v", tg)
	}
}
