package issuance

import (
	"bytes"
	"embed"
	"html/template"
	"net/http"
)

//go:embed templates/*.html
var templateFS embed.FS

// pages are the server-rendered login, consent, device and error pages
// (html/template: every value is escaped for its context). They need no
// JavaScript.
var pages = template.Must(template.ParseFS(templateFS, "templates/*.html"))

// pageData is what every page template reads.
type pageData struct {
	Title      string
	Error      string
	Message    string
	ClientName string
	Username   string
	Action     string
	Req        string
	Scopes     []string
	UserCode   string
}

// renderPage writes a page with headers that keep it out of caches and
// frames and let it load nothing but its inline style.
func (s *Server) renderPage(w http.ResponseWriter, r *http.Request, status int, name string, d pageData) {
	var buf bytes.Buffer
	if err := pages.ExecuteTemplate(&buf, name, d); err != nil {
		s.log.Error("issuance: render page", "page", name, "error", err)
		s.writeError(w, r, newError(CodeServerError, http.StatusInternalServerError, "internal error", err))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// errorPage shows an error that must not be redirected (RFC 6749 §4.1.2.1:
// a missing, invalid or mismatching redirect URI or client id).
func (s *Server) errorPage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	s.renderPage(w, r, status, "error.html", pageData{Title: "Sign-in error", Message: msg})
}
