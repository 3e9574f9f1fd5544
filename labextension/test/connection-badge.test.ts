import { describe, expect, it } from 'vitest';
import { connectionAttr, connectionLabel } from '../src/runview';

describe('connection badge', () => {
  it('maps states to the data-connection contract', () => {
    expect(connectionAttr('socket', { state: 'live' })).toBe('live');
    expect(connectionAttr('socket', { state: 'connecting' })).toBe('reconnecting');
    expect(connectionAttr('socket', { state: 'reconnecting', retryInMs: 3000 })).toBe('reconnecting');
    expect(connectionAttr('socket', { state: 'offline' })).toBe('offline');
    expect(connectionAttr('comm', { state: 'live' })).toBe('comm');
  });

  it('counts down to the next attempt, in whole seconds', () => {
    expect(connectionLabel('socket', { state: 'reconnecting', retryInMs: 4200 })).toBe('reconnecting in 5 s');
    expect(connectionLabel('socket', { state: 'reconnecting', retryInMs: 0 })).toBe('reconnecting…');
    expect(connectionLabel('socket', { state: 'connecting' })).toBe('connecting…');
    expect(connectionLabel('socket', { state: 'offline' })).toBe('offline');
    expect(connectionLabel('comm', { state: 'live' })).toBe('kernel channel');
  });
});
