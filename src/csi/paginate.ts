// Paging of ListVolumes and ListSnapshots: device ids in order, the token the id to start at.
import type { DeviceInfo } from '../thin/pool';
import { aborted, invalidArgument } from './errors';

export interface ListRequest {
  max_entries: number;
  starting_token: string;
}

/**
 * One page of a listing: the token is the id the next page starts at, and `fetch` is asked for
 * one entry more than the page holds, to know whether there is a next page.
 */
export function paginate(
  request: ListRequest,
  fetch: (page: { after?: number; limit?: number }) => DeviceInfo[],
): { page: DeviceInfo[]; next: string } {
  if (request.max_entries < 0) throw invalidArgument('max_entries must not be negative');
  let after: number | undefined;
  if (request.starting_token) {
    if (!/^\d+$/.test(request.starting_token))
      throw aborted(`starting_token ${JSON.stringify(request.starting_token)} is not one of ours`);
    after = Number(request.starting_token) - 1;
  }
  const limit = request.max_entries > 0 ? request.max_entries : undefined;
  const items = fetch({ after, limit: limit === undefined ? undefined : limit + 1 });
  if (limit === undefined || items.length <= limit) return { page: items, next: '' };
  return { page: items.slice(0, limit), next: String(items[limit].id) };
}
