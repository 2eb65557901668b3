import { z } from 'zod';
import type { RouteSpec } from './route-spec';

/** The public routes: health, readiness, metrics and the API document. */

export const healthReply = z.object({
  status: z.enum(['ok', 'unavailable']),
  postgres: z.enum(['ok', 'unavailable']),
  temporal: z.enum(['ok', 'unavailable']),
});

export const readyReply = z.object({
  status: z.enum(['ok', 'unavailable']),
  checks: z.record(z.string(), z.unknown()),
});

export const healthRoutes = {
  healthz: {
    method: 'GET',
    url: '/healthz',
    summary: '200 when Postgres and Temporal answer, 503 otherwise',
    access: 'public',
    replies: { 200: healthReply, 503: healthReply },
  },
  readyz: {
    method: 'GET',
    url: '/readyz',
    summary: '200 when Postgres and Temporal answer (for load balancers), 503 otherwise',
    access: 'public',
    replies: { 200: readyReply, 503: readyReply },
  },
  metrics: {
    method: 'GET',
    url: '/metrics',
    summary: 'Prometheus metrics (text format)',
    access: 'public',
    contentType: 'text/plain',
    replies: { 200: z.string() },
  },
  openapi: {
    method: 'GET',
    url: '/openapi.json',
    summary: 'This document',
    access: 'public',
    replies: { 200: z.record(z.string(), z.unknown()) },
  },
} satisfies Record<string, RouteSpec>;
