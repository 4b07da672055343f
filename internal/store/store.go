// Package store is Ward's system of record: it opens the database, runs the
// embedded schema migrations and hands out connections and transactions.
//
// Two dialects share one schema and one set of domain queries:
//
//   - SQLite (modernc.org/sqlite, pure Go) in the data directory, the single-node
//     default. The file runs in WAL mode with synchronous=FULL, so a commit
//     survives a power cut as well as a crash of the process. Writes go
//     through one dedicated connection, so writers queue in Go instead of
//     sleeping in SQLite's busy handler; reads use a separate pool and never
//     wait for a writer.
//   - PostgreSQL (pgx through database/sql) for several nodes. Migrations take a
//     session advisory lock so that nodes starting together apply them once.
//
// Domain packages own their SQL. They write it with `?` placeholders and
// portable types; the store rebinds placeholders for PostgreSQL. Where SQL must
// differ, a domain asks Dialect(). Time columns are TIMESTAMP in SQLite and
// TIMESTAMPTZ in PostgreSQL and are always written in UTC.
//
// Rules for callers: every change is made inside Tx, one transaction per
// decision, so a refused or failed request writes nothing but what it records
// on purpose. Never start a Tx while holding another: on SQLite the single
// write connection would deadlock.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

//go:embed migrations
var migrations embed.FS

// Dialect names the SQL dialect behind a Store.
type Dialect string

// The supported dialects.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// ErrNotFound is returned by domain queries when a row does not exist.
var ErrNotFound = errors.New("not found")

// Querier is what both a Store (reads) and a Tx (reads and writes) offer.
// Queries use `?` placeholders.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Store is an open database with its schema migrated.
type Store struct {
	dialect Dialect
	read    *sql.DB
	write   *sql.DB // the same pool as read on PostgreSQL
	where   string  // redacted location, for logs

	mu     sync.RWMutex
	rebind map[string]string

	// Prepared statements, SQLite only: modernc re-parses every statement
	// it is not given prepared, and parsing costs more than running most
	// of Ward's queries. pgx caches prepared statements itself.
	readStmts, writeStmts stmtCache
}

// stmtCache holds prepared statements by query text. Ward's queries are
// constants, so it stays small; past maxStmts it stops adding.
type stmtCache struct {
	mu sync.RWMutex
	m  map[string]*sql.Stmt
}

const maxStmts = 512

func (c *stmtCache) lookup(q string) *sql.Stmt {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.m[q]
}

// get returns the prepared statement for q, preparing it if needed. The
// cache's lock is never held while preparing: preparing may wait for the
// write connection, and the transaction holding it may need the cache.
func (c *stmtCache) get(ctx context.Context, db *sql.DB, q string) (*sql.Stmt, error) {
	if st := c.lookup(q); st != nil {
		return st, nil
	}
	c.mu.RLock()
	full := len(c.m) >= maxStmts
	c.mu.RUnlock()
	if full {
		return nil, nil
	}
	st, err := db.PrepareContext(ctx, q)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev := c.m[q]; prev != nil {
		st.Close()
		return prev, nil
	}
	if c.m == nil {
		c.m = map[string]*sql.Stmt{}
	}
	c.m[q] = st
	return st, nil
}

func (c *stmtCache) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.m {
		st.Close()
	}
	c.m = nil
}

var (
	_ Querier = (*Store)(nil)
	_ Querier = (*Tx)(nil)
)

// Open opens the store at rawURL and applies pending migrations.
//
// Accepted forms: "postgres://…" or "postgresql://…" for PostgreSQL;
// "sqlite:///abs/path.db", "sqlite://rel/path.db", "file:path.db" or a bare
// path for SQLite.
func Open(ctx context.Context, rawURL string) (*Store, error) {
	var (
		s   *Store
		err error
	)
	switch {
	case strings.HasPrefix(rawURL, "postgres://"), strings.HasPrefix(rawURL, "postgresql://"):
		s, err = openPostgres(ctx, rawURL)
	default:
		s, err = openSQLite(ctx, sqlitePath(rawURL))
	}
	if err != nil {
		return nil, err
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func sqlitePath(raw string) string {
	switch {
	case strings.HasPrefix(raw, "sqlite://"):
		return strings.TrimPrefix(raw, "sqlite://")
	case strings.HasPrefix(raw, "file:"):
		p := strings.TrimPrefix(raw, "file:")
		if i := strings.IndexByte(p, '?'); i >= 0 {
			p = p[:i]
		}
		return p
	}
	return raw
}

func openSQLite(ctx context.Context, path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("store: empty SQLite path")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	q := url.Values{}
	for _, p := range []string{
		"journal_mode(WAL)",
		"synchronous(FULL)",
		"busy_timeout(10000)",
		"foreign_keys(ON)",
		"temp_store(MEMORY)",
	} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	q.Set("_time_format", "sqlite")
	dsn := "file:" + path + "?" + q.Encode()

	write, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	write.SetMaxOpenConns(1)
	write.SetMaxIdleConns(1)
	write.SetConnMaxLifetime(0)
	write.SetConnMaxIdleTime(0)
	if err := write.PingContext(ctx); err != nil {
		write.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	read, err := sql.Open("sqlite", dsn)
	if err != nil {
		write.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	read.SetMaxOpenConns(8)
	read.SetMaxIdleConns(8)
	read.SetConnMaxIdleTime(0)
	return &Store{dialect: SQLite, read: read, write: write, where: path, rebind: map[string]string{}}, nil
}

func openPostgres(ctx context.Context, rawURL string) (*Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// The URL may hold a password: do not echo it.
		return nil, errors.New("store: invalid PostgreSQL URL")
	}
	db, err := sql.Open("pgx", rawURL)
	if err != nil {
		return nil, fmt.Errorf("store: open postgres %s: %w", u.Redacted(), err)
	}
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(32)
	db.SetConnMaxIdleTime(5 * time.Minute)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: connect postgres %s: %w", u.Redacted(), err)
	}
	return &Store{dialect: Postgres, read: db, write: db, where: u.Redacted(), rebind: map[string]string{}}, nil
}

func (s *Store) migrate(ctx context.Context) error {
	sub, err := fs.Sub(migrations, "migrations/"+string(s.dialect))
	if err != nil {
		return fmt.Errorf("store: migrations: %w", err)
	}
	var opts []goose.ProviderOption
	dialect := goose.DialectSQLite3
	if s.dialect == Postgres {
		dialect = goose.DialectPostgres
		locker, err := lock.NewPostgresSessionLocker()
		if err != nil {
			return fmt.Errorf("store: migrations: %w", err)
		}
		opts = append(opts, goose.WithSessionLocker(locker))
	}
	p, err := goose.NewProvider(dialect, s.write, sub, opts...)
	if err != nil {
		return fmt.Errorf("store: migrations: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("store: migrate %s: %w", s.where, err)
	}
	return nil
}

// Dialect reports which SQL dialect the store speaks.
func (s *Store) Dialect() Dialect { return s.dialect }

// String names the store for logs, without credentials.
func (s *Store) String() string { return string(s.dialect) + " " + s.where }

// Close closes every connection.
func (s *Store) Close() error {
	s.readStmts.close()
	s.writeStmts.close()
	err := s.read.Close()
	if s.write != s.read {
		err = errors.Join(err, s.write.Close())
	}
	return err
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.read.PingContext(ctx); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}

// Rebind rewrites `?` placeholders into the store's dialect. Question marks
// inside single-quoted literals are left alone.
func (s *Store) Rebind(q string) string {
	if s.dialect != Postgres {
		return q
	}
	s.mu.RLock()
	r, ok := s.rebind[q]
	s.mu.RUnlock()
	if ok {
		return r
	}
	var b strings.Builder
	n, quoted := 0, false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'':
			quoted = !quoted
			b.WriteByte(c)
		case c == '?' && !quoted:
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
		default:
			b.WriteByte(c)
		}
	}
	r = b.String()
	s.mu.Lock()
	s.rebind[q] = r
	s.mu.Unlock()
	return r
}

// ExecContext runs a statement outside any transaction, on the write side.
func (s *Store) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if st := s.prepared(ctx, &s.writeStmts, s.write, q); st != nil {
		return st.ExecContext(ctx, normalize(args)...)
	}
	return s.write.ExecContext(ctx, s.Rebind(q), normalize(args)...)
}

// QueryContext runs a read query.
func (s *Store) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st := s.prepared(ctx, &s.readStmts, s.read, q); st != nil {
		return st.QueryContext(ctx, normalize(args)...)
	}
	return s.read.QueryContext(ctx, s.Rebind(q), normalize(args)...)
}

// QueryRowContext runs a read query that returns at most one row.
func (s *Store) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	if st := s.prepared(ctx, &s.readStmts, s.read, q); st != nil {
		return st.QueryRowContext(ctx, normalize(args)...)
	}
	return s.read.QueryRowContext(ctx, s.Rebind(q), normalize(args)...)
}

// prepared returns a cached prepared statement for q on SQLite, or nil to
// run q unprepared (PostgreSQL, a full cache, or a statement that does not
// prepare, whose error the unprepared run then reports).
func (s *Store) prepared(ctx context.Context, c *stmtCache, db *sql.DB, q string) *sql.Stmt {
	if s.dialect != SQLite {
		return nil
	}
	st, err := c.get(ctx, db, q)
	if err != nil {
		return nil
	}
	return st
}

// Tx is a write transaction. Its queries use `?` placeholders.
type Tx struct {
	s      *Store
	tx     *sql.Tx
	missed []string // SQLite statements to prepare once the connection is free
}

// stmt returns the prepared statement for q if there is one. It never
// prepares: the transaction holds SQLite's only write connection, so
// preparing on the pool here would wait for it forever. Tx prepares the
// statements it missed after it ends.
func (t *Tx) stmt(q string) *sql.Stmt {
	if t.s.dialect != SQLite {
		return nil
	}
	st := t.s.writeStmts.lookup(q)
	if st == nil && len(t.missed) < 32 {
		t.missed = append(t.missed, q)
	}
	return st
}

// ExecContext runs a statement in the transaction.
func (t *Tx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	if st := t.stmt(q); st != nil {
		return t.tx.StmtContext(ctx, st).ExecContext(ctx, normalize(args)...)
	}
	return t.tx.ExecContext(ctx, t.s.Rebind(q), normalize(args)...)
}

// QueryContext runs a query in the transaction.
func (t *Tx) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	if st := t.stmt(q); st != nil {
		return t.tx.StmtContext(ctx, st).QueryContext(ctx, normalize(args)...)
	}
	return t.tx.QueryContext(ctx, t.s.Rebind(q), normalize(args)...)
}

// QueryRowContext runs a single-row query in the transaction.
func (t *Tx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	if st := t.stmt(q); st != nil {
		return t.tx.StmtContext(ctx, st).QueryRowContext(ctx, normalize(args)...)
	}
	return t.tx.QueryRowContext(ctx, t.s.Rebind(q), normalize(args)...)
}

// Dialect reports the dialect of the transaction's store.
func (t *Tx) Dialect() Dialect { return t.s.dialect }

// Tx runs fn in one write transaction and commits if fn returns nil.
// On SQLite the transaction begins IMMEDIATE, so it never fails later on a
// lock upgrade.
func (s *Store) Tx(ctx context.Context, fn func(tx *Tx) error) (err error) {
	sqlTx, err := s.write.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	tx := &Tx{s: s, tx: sqlTx}
	defer func() {
		for _, q := range tx.missed {
			_, _ = s.writeStmts.get(ctx, s.write, q)
		}
	}()
	defer func() {
		if p := recover(); p != nil {
			_ = sqlTx.Rollback()
			panic(p)
		}
		if err != nil {
			_ = sqlTx.Rollback()
		}
	}()
	if err = fn(tx); err != nil {
		return err
	}
	if err = sqlTx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

// normalize writes every time in UTC, so SQLite's text form sorts and
// compares correctly.
func normalize(args []any) []any {
	for i, a := range args {
		switch v := a.(type) {
		case time.Time:
			args[i] = v.UTC()
		case *time.Time:
			if v == nil {
				args[i] = nil
			} else {
				args[i] = v.UTC()
			}
		}
	}
	return args
}

// IsUniqueViolation reports whether err is a unique or primary-key
// constraint violation in either dialect.
func IsUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "23505"
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() == sqlite3.SQLITE_CONSTRAINT_UNIQUE || se.Code() == sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY
	}
	return false
}

// NullTime converts an optional time for a query argument.
func NullTime(t time.Time) sql.NullTime {
	if t.IsZero() {
		return sql.NullTime{}
	}
	return sql.NullTime{Time: t.UTC(), Valid: true}
}
