// The committed wire schema (generated from the Python models), read at run time: what
// the tests check the front end and the recorded fixtures against.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const schema = JSON.parse(readFileSync(join(__dirname, '..', 'schema', 'protocol.schema.json'), 'utf8'));

/** Every event type of the protocol. */
export const EVENT_TYPES: string[] = Object.keys(
  schema.$defs.EventsMsg.properties.events.items.discriminator.mapping
).sort();
