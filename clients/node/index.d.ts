// Types of the Node.js client's promise wrapper (index.js). Answers are proto3 JSON: camelCase fields,
// RFC 3339 timestamps, default values left out. The raw stubs are grpc-js clients built at run time.

import * as grpc from '@grpc/grpc-js';

export interface ClientOptions {
  /** Deadline of each call, default 30000. */
  timeoutMs?: number;
  /** Default: insecure (plaintext). */
  credentials?: grpc.ChannelCredentials;
  channelOptions?: grpc.ChannelOptions;
  /** Folder holding foretell/v1 and third_party/; default FORETELL_PROTOS or this repository's protos/. */
  protosDir?: string;
}

export interface PredictedItem {
  itemId: string;
  /** Left out for items the model does not know. */
  score?: number;
  metadata?: { [column: string]: unknown };
  reason?: string;
}

interface Personalization {
  campaign: string;
  filter?: string;
  filterValues?: { [name: string]: string };
  context?: { [name: string]: string };
  metadataColumns?: string[];
  sessionId?: string;
  timeoutMs?: number;
}

export interface GetRecommendationsRequest extends Personalization {
  userId?: string;
  itemId?: string;
  numResults?: number;
  includeInteracted?: boolean;
}

export interface GetPersonalizedRankingRequest extends Personalization {
  userId: string;
  inputList: string[];
}

export interface GetSimilarItemsRequest {
  campaign: string;
  itemId: string;
  numResults?: number;
  filter?: string;
  filterValues?: { [name: string]: string };
  timeoutMs?: number;
}

export interface QueryForecastRequest {
  forecast: string;
  itemId?: string;
  dimensions?: { [name: string]: string };
  /** Date, RFC 3339 string or epoch seconds. */
  startTime?: Date | string | number;
  endTime?: Date | string | number;
  quantiles?: number[];
  pageSize?: number;
  pageToken?: string;
  timeoutMs?: number;
}

export interface DataPoint {
  timestamp: string;
  value?: number;
}

export interface SeriesForecast {
  itemId?: string;
  dimensions?: { [name: string]: string };
  quantiles?: { quantile: number; points: DataPoint[] }[];
  mean?: DataPoint[];
}

export class ForetellError extends Error {
  code: grpc.status;
  codeName: string;
  statusMessage: string;
  /** google.rpc.Status details as proto3 JSON, each with its "@type". */
  details: ({ '@type': string } & { [field: string]: unknown })[];
  readonly reason: string;
  readonly fieldViolations: { field: string; description: string }[];
  toJSON(): { code: string; message: string; details: unknown[] };
}

export class Client {
  constructor(target: string, options?: ClientOptions);
  readonly target: string;
  /** Raw grpc-js stubs (callback style, snake_case fields). */
  datasets: grpc.Client & { [method: string]: Function };
  training: grpc.Client & { [method: string]: Function };
  recommendations: grpc.Client & { [method: string]: Function };
  forecastQuery: grpc.Client & { [method: string]: Function };
  operations: grpc.Client & { [method: string]: Function };
  close(): void;
  call<T = unknown>(stub: grpc.Client, method: string, request: object, timeoutMs?: number): Promise<T>;
  getRecommendations(request: GetRecommendationsRequest): Promise<{ itemList?: PredictedItem[]; recommendationId?: string }>;
  getPersonalizedRanking(
    request: GetPersonalizedRankingRequest,
  ): Promise<{ personalizedRanking?: PredictedItem[]; recommendationId?: string }>;
  getSimilarItems(request: GetSimilarItemsRequest): Promise<{ itemList?: PredictedItem[] }>;
  queryForecast(request: QueryForecastRequest): Promise<{ series?: SeriesForecast[]; nextPageToken?: string }>;
}

export function loadPackage(options?: { protosDir?: string }): grpc.GrpcObject;
export function timestampToJson(timestamp: { seconds: string | number; nanos?: number }): string;
export function toTimestamp(value: Date | string | number): { seconds: string; nanos: number } | undefined;
export const DEFAULT_PROTOS: string;
export { grpc };
