package issuance

import (
	"crypto/sha256"
	"encoding/base64"
	"runtime"
)

// initFlows sets up the end-user flows of Config.Users and Config.Grants.
func (s *Server) initFlows() error {
	fk, err := newFlowKeys(s.cfg.KEK)
	if err != nil {
		return err
	}
	s.users, s.grantW, s.flow = s.cfg.Users, s.cfg.Grants, fk
	// dummyHash costs an unknown username as much as a wrong password.
	s.dummyHash = PasswordHash{Alg: "argon2id", Salt: make([]byte, 16), Hash: make([]byte, 32), Time: 2, MemoryKiB: 19 * 1024, Threads: 1}
	s.loginLimit = newLimiters(s.cfg.LoginAttemptsPerMinute, s.cfg.LoginAttemptsPerMinute)
	s.codeIPLimit = newLimiters(s.cfg.UserCodeAttemptsPerMinute, s.cfg.UserCodeAttemptsPerMinute)
	s.codeSLimit = newLimiters(s.cfg.UserCodeAttemptsPerMinute, s.cfg.UserCodeAttemptsPerMinute)
	s.device = newDeviceGuard(s.cfg.DeviceLimits.withDefaults())
	s.hashSem = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))
	return nil
}

// flowRoutes adds the end-user endpoints.
func (s *Server) flowRoutes() {
	s.mux.HandleFunc("GET /t/{tenant}/oauth2/authorize", s.handleAuthorize)
	s.mux.HandleFunc("POST /t/{tenant}/oauth2/authorize", s.handleAuthorize)
	s.mux.HandleFunc("GET /t/{tenant}/oauth2/userinfo", s.handleUserinfo)
	s.mux.HandleFunc("POST /t/{tenant}/oauth2/userinfo", s.handleUserinfo)
	s.mux.HandleFunc("POST /t/{tenant}/oauth2/device_authorization", s.handleDeviceAuthorization)
	s.mux.HandleFunc("POST /t/{tenant}/oauth2/par", s.handlePAR) // par.go
	s.mux.HandleFunc("GET /t/{tenant}/device", s.handleDevicePage)
	s.mux.HandleFunc("POST /t/{tenant}/device", s.handleDevicePage)
}

// sha256Sum is how codes, refresh tokens and device codes are stored: a
// SHA-256 of a high-entropy value needs no slow hash.
func sha256Sum(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

func encodeB64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }
