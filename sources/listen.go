package sources

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listener is a dedicated connection LISTENing on one channel.
type Listener struct {
	conn *pgx.Conn
}

// Listen opens a connection of its own (not from the pool, which would
// hand it to others) and LISTENs on channel.
func (p *Postgres) Listen(ctx context.Context, channel string) (*Listener, error) {
	conn, err := pgx.ConnectConfig(ctx, p.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, fmt.Errorf("connect for LISTEN: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("listen %s: %w", channel, err)
	}
	return &Listener{conn: conn}, nil
}

// Wait blocks until a notification arrives and returns its payload.
func (l *Listener) Wait(ctx context.Context) (string, error) {
	n, err := l.conn.WaitForNotification(ctx)
	if err != nil {
		return "", fmt.Errorf("wait for notification: %w", err)
	}
	return n.Payload, nil
}

// Close closes the connection.
func (l *Listener) Close() { _ = l.conn.Close(context.Background()) }

// Ping checks that the database answers.
func (p *Postgres) Ping(ctx context.Context) error { return p.pool.Ping(ctx) }

// Now is the database's clock.
func (p *Postgres) Now(ctx context.Context) (time.Time, error) {
	var t time.Time
	if err := p.pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&t); err != nil {
		return t, fmt.Errorf("read the database's clock: %w", err)
	}
	return t, nil
}
